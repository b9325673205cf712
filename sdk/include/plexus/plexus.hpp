// plexus/plexus.hpp: everything a plugin author needs, in one include.
//
//   error.hpp      plexus::Error, with a hint for the user
//   config.hpp     Value, ConfigSchema (what a plugin accepts), Config (what it was given)
//   plugin.hpp     PluginDescriptor and PLEXUS_PLUGIN, the entry point
//   context.hpp    RunContext: rank, device, transport, settings, metrics, clock, factories
//   model.hpp      Model as an ordered list of Blocks, FLOPs per token
//   optimizer.hpp  Optimizer over explicit tensors, its state as a value
//   dataset.hpp    Dataset and deterministic BatchStreams
//   strategy.hpp   Strategy: one rank's training step and evaluation
//   transport.hpp  collectives and point-to-point with accounting
//   comm.hpp       communication schemes (plain, compressed, hierarchical)
//   poisson.hpp    seeded Poisson event processes both ends of an edge reproduce
//   graph.hpp      communication graphs, their spectral constants (gossip, A2CiD2); include where needed
//   util.hpp       small helpers shared by plugins (gradient clipping, seed mixing)
//   token_windows.hpp  deterministic random-window batches over token arrays (datasets)
//   replica.hpp    base for strategies where each rank holds the whole model (single, ddp)
//   compat.hpp     LibTorch 1.13 / 2.x differences (attention, autocast, fused AdamW); include where needed
//   loss.hpp       cross_entropy: the next-token loss, its backward in place; include where needed
//   transformer.hpp  GPT pieces: parameters, layer norm, embedding, attention, MLP; include where needed
//   lopt_weights.hpp the learned optimizer's weights and their file format; include where needed
#pragma once

#include "plexus/comm.hpp"
#include "plexus/config.hpp"
#include "plexus/context.hpp"
#include "plexus/dataset.hpp"
#include "plexus/error.hpp"
#include "plexus/model.hpp"
#include "plexus/optimizer.hpp"
#include "plexus/plugin.hpp"
#include "plexus/poisson.hpp"
#include "plexus/strategy.hpp"
#include "plexus/transport.hpp"
#include "plexus/util.hpp"
