//! Integration tests: the real server on a free port, real HTTP receivers, real clients.

mod delivery;
mod events;
mod helpers;
mod live;
mod norns;
mod process;
mod servers;
mod sinks;
mod sources;
