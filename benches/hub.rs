//! Micro-benchmarks of the event path: WRP decode + route + encode per event, and norn matching
//! with 1,000,000 norns registered (also reports the index's bytes per norn), each beside a
//! baseline measured in the same run (the WRP codec alone; a plain `HashMap` lookup).
//!
//! `cargo bench --bench hub`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use brunnr::hub::router::Router;
use brunnr::hub::subscription::Subscription;
use brunnr::norn::{Destination, HttpDestination, HttpFormat, Norn};
use brunnr::wrp::WrpMessage;
use criterion::{Criterion, criterion_group, criterion_main};

/// Counts live heap bytes, to report what each norn costs.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn device(n: usize) -> String {
    format!("mac:{n:012x}")
}

fn norn(n: usize) -> Norn {
    Norn {
        id: uuid::Uuid::now_v7(),
        key: device(n),
        destination: Destination::Http(HttpDestination {
            url: format!("https://hooks.example.com/device/{n}"),
            secret: None,
            failure_url: None,
            format: HttpFormat::Wrp,
        }),
        duration_ms: Some(86_400_000),
        filter: None,
        expires_at_ms: i64::MAX,
        owner: "alice".into(),
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

fn router_with(count: usize) -> Router {
    let router = Router::default();
    for n in 0..count {
        router.insert(Arc::new(Subscription::new(norn(n), None)));
    }
    router
}

fn sample_event() -> Vec<u8> {
    WrpMessage {
        msg_type: 4,
        source: "mac:000000000007".into(),
        dest: "event:device-status/mac:000000000007/online".into(),
        transaction_uuid: Some("7c6a3a64-7e1b-4b76-9d8d-3b1f2f0a9e11".into()),
        content_type: Some("application/json".into()),
        metadata: [("/boot-time".to_string(), "1700000000".to_string())].into(),
        partner_ids: vec!["comcast".into()],
        payload: Some(
            br#"{"id":"mac:000000000007","ts":"2026-11-26T00:00:00Z","reason":"ssl_success"}"#
                .to_vec()
                .into(),
        ),
        ..Default::default()
    }
    .to_msgpack()
}

fn decode_route_encode(c: &mut Criterion) {
    let router = router_with(10_000);
    let bytes = sample_event();
    // Baseline: the WRP codec alone, so routing's share shows as the difference.
    c.bench_function("baseline_wrp_decode_encode", |b| {
        b.iter(|| {
            let message = WrpMessage::from_msgpack(black_box(&bytes)).unwrap();
            black_box(message.to_msgpack())
        })
    });
    c.bench_function("wrp_decode_route_encode", |b| {
        b.iter(|| {
            let message = WrpMessage::from_msgpack(black_box(&bytes)).unwrap();
            let key = brunnr::wrp::event_device_id(&message).unwrap();
            let mut out = 0;
            router.for_each(&key, |subscription| {
                out += black_box(subscription.norn.id.as_u128() as usize);
            });
            black_box(message.to_msgpack());
            out
        })
    });
}

fn matching_one_million(c: &mut Criterion) {
    const NORNS: usize = 1_000_000;
    let before = LIVE.load(Ordering::Relaxed);
    let router = router_with(NORNS);
    let bytes_per_norn = (LIVE.load(Ordering::Relaxed) - before) as f64 / NORNS as f64;
    eprintln!(
        "norn index: {NORNS} norns, {bytes_per_norn:.0} bytes per norn (heap, index included)"
    );
    let keys: Vec<String> = (0..4096).map(|i| device((i * 7919) % NORNS)).collect();
    // Baseline: a plain std HashMap from key to one value, the same size, the same keys.
    let plain: std::collections::HashMap<String, u64> =
        (0..NORNS).map(|n| (device(n), n as u64)).collect();
    let mut i = 0;
    c.bench_function("baseline_hashmap_get_1m", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(plain.get(black_box(&keys[i])))
        })
    });
    drop(plain);
    c.bench_function("match_1m_norns", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            router.for_each(black_box(&keys[i]), |subscription| {
                black_box(subscription);
            })
        })
    });
}

criterion_group!(benches, decode_route_encode, matching_one_million);
criterion_main!(benches);
