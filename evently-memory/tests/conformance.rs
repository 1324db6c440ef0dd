//! The store conformance suite, run against the in-memory store.

evently_core::conformance_suite!(|| async { evently_memory::MemoryStore::new() });
