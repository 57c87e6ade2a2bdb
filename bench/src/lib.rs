//! The Midosoc benchmark suite: the gateway measured side by side with
//! nginx and with a direct upstream, in one run, on one machine.
//!
//! Every figure is a ratio measured within the same run, next to its raw
//! value. The parts are small programs so that each can be pinned to its
//! own core and its CPU time read from `/proc`:
//!
//! - [`upstream`]: the API behind every proxy; answers at once and counts
//!   the destructive requests that reach it;
//! - [`holder`]: agents whose risky requests are held, in bulk or one
//!   probe at a time, timing each answer's first byte;
//! - [`sse`]: analyst dashboards following `/api/events`, timing each
//!   event's arrival;
//! - [`loadgen`]: open-loop load at a fixed rate, latency measured from
//!   the moment each request was due, so queueing is not hidden;
//! - [`driver`]: starts everything, runs the five scenarios and writes
//!   `bench/results/results.json` and `docs/benchmarks.md`.
//!
//! Timestamps cross process boundaries as nanoseconds of the monotonic
//! clock ([`clock::now_ns`]), which every process on the machine shares.

pub mod clock;
pub mod driver;
pub mod holder;
pub mod http1;
pub mod lines;
pub mod loadgen;
pub mod sse;
pub mod stats;
pub mod upstream;
