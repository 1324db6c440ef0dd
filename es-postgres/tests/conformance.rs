//! The store conformance suite, run against PostgreSQL, one schema per test.

mod common;

es_core::conformance_suite!(common::fresh_store);
