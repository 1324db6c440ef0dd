//! The store conformance suite, run against PostgreSQL, one schema per test.

mod common;

evently_core::conformance_suite!(common::fresh_store);
