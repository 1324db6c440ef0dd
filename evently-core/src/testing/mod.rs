//! Test support (feature `testing`): the given/when/then kit for
//! aggregates ([`given`], [`Scenario`]), a fault-injecting store wrapper
//! ([`FaultyStore`]) and the store conformance suite ([`conformance`]).

pub mod conformance;
mod faulty;
mod scenario;

pub use faulty::FaultyStore;
pub use scenario::{given, Scenario, ThenExpect};
