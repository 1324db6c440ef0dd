//! Test support (feature `testing`): the given/when/then kit for
//! aggregates ([`given`], [`Scenario`]), a fault-injecting store wrapper
//! ([`FaultyStore`]), the store conformance suite ([`conformance`]) and
//! a capture of spans and metrics ([`telemetry`]).

pub mod conformance;
mod faulty;
mod scenario;
pub mod telemetry;

pub use faulty::FaultyStore;
pub use scenario::{given, recorded, Scenario, ThenExpect};
