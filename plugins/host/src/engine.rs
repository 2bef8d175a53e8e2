//! The wasmtime engine all of a host's plugins share.
//!
//! - **Pooling allocator**: instance memories, tables and vmctx come from
//!   slots reserved once, so a fresh instance per call costs microseconds
//!   (copy-on-write memory images, no mmap per call).
//! - **Epoch interruption**: a hook past its time limit traps at the next
//!   epoch check (see [`crate::limits`]).
//! - The engine's settings are part of the compile cache key, so a change
//!   here recompiles (once, at load) rather than loading incompatible code.

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::MAX_MEMORY_LIMIT_MIB;
use crate::Error;

/// How many component instances may be live at once (concurrent hook calls).
pub const MAX_CONCURRENT_INSTANCES: u32 = 32;

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
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));

    Engine::new(&cfg).map_err(|e| Error::Engine(format!("{e:#}")))
}
