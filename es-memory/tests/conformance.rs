//! The store conformance suite, run against the in-memory store.

es_core::conformance_suite!(|| async { es_memory::MemoryStore::new() });
