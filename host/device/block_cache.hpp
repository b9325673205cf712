// The CPU allocator of the simulated cluster: freed tensor blocks are kept in free lists by exact
// size and handed to the next request of that size, most recently freed first.
//
// Thousands of simulated ranks allocate the same sizes in the same order, one rank at a time,
// and free most of a step's tensors before the next rank runs. glibc's single arena (one for
// all rank threads, to keep their memory) then searched a heap of several GB for every
// activation; here the next rank takes the block the previous one just freed, still in cache.
// Blocks come from 64 MiB slabs marked for transparent huge pages (fewer TLB misses over a
// heap that large). Nothing is returned to the system while the process lives; blocks over
// 8 MiB bypass the cache. LibTorch's memory reporting still sees every block (MeterScope).
#pragma once

namespace plexus::host {

// Makes the block cache LibTorch's CPU allocator for the rest of the process (idempotent).
// Call before the threads that allocate start.
void use_cpu_block_cache();

}  // namespace plexus::host
