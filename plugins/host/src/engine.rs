//! The wasmtime engine all of a host's plugins share.
//!
//! - **Pooling allocator**: instance memories, tables and vmctx come from
//!   slots reserved once, so a fresh instance per call costs microseconds
//!   (copy-on-write memory images, no mmap per call).
//! - **Epoch interruption**: a hook past its time limit traps at the next
//!   epoch check (see [`crate::limits`]).
//! - The engine's settings are part of the compile cache key, so a change
//!   here recompiles (once, at load) rather than loading incompatible code.

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::MAX_MEMORY_LIMIT_MIB;
use crate::Error;

/// How many component instances may be live at once (concurrent hook calls).
pub const MAX_CONCURRENT_INSTANCES: u32 = 32;

/// Bytes of a linear memory's slot kept resident between calls (the pages
/// a call dirtied, restored by copy, not by madvise + fault).
const KEEP_RESIDENT_MEMORY: usize = 16 << 20;
/// Bytes of a table's slot kept resident between calls.
const KEEP_RESIDENT_TABLE: usize = 1 << 20;

/// Builds the engine: component model, epoch interruption, pooling allocator.
pub fn new_engine() -> Result<Engine, Error> {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true);
    cfg.epoch_interruption(true);

    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(MAX_CONCURRENT_INSTANCES);
    // Interpreted guests (Python, JavaScript) are several core instances,
    // memories and tables each.
    pool.total_core_instances(MAX_CONCURRENT_INSTANCES * 16);
    pool.total_memories(MAX_CONCURRENT_INSTANCES * 4);
    pool.total_tables(MAX_CONCURRENT_INSTANCES * 16);
    pool.max_core_instances_per_component(64);
    pool.max_memories_per_component(16);
    pool.max_tables_per_component(64);
    pool.max_memories_per_module(1);
    pool.table_elements(200_000);
    pool.max_memory_size((MAX_MEMORY_LIMIT_MIB as usize) << 20);
    pool.max_component_instance_size(4 << 20);
    pool.max_core_instance_size(4 << 20);
    // A slot freed by a call is reset for the next one without giving its
    // pages back to the kernel: PAGEMAP_SCAN (Linux 6.7+) finds the pages
    // the call wrote and only those are restored from the memory image (or
    // zeroed); the rest is still the copy-on-write image. Without it every
    // call pays an madvise (with its TLB shootdown) at the end and a page
    // fault per touched page at the start. Up to the limits below a slot
    // stays resident; above them, or without PAGEMAP_SCAN, the remainder
    // is given back with madvise as before. A fresh call still sees exactly
    // the pristine image: nothing of one container's call reaches the next.
    // The workspace patches wasmtime 48.0.8 here (plugins/host/vendor): its
    // scan stopped after 32 dirty regions (an interpreter's heap has ~140,
    // refaulted on every call), and missed dirty pages swapped out between
    // calls, which the next instance would have seen.
    pool.pagemap_scan(Enabled::Auto);
    pool.linear_memory_keep_resident(KEEP_RESIDENT_MEMORY);
    pool.table_keep_resident(KEEP_RESIDENT_TABLE);
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

    Engine::new(&cfg).map_err(|e| Error::Engine(format!("{e:#}")))
}
