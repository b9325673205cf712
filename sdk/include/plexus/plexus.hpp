// plexus/plexus.hpp: the contract between the host and a plugin, in one include.
//
//   error.hpp      plexus::Error, with a hint for the user
//   config.hpp     Value, ConfigSchema (what a plugin accepts), Config (what it was given)
//   plugin.hpp     PluginDescriptor and PLEXUS_PLUGIN, the entry point
//   context.hpp    RunContext: rank, device, transport, the run's shape, metrics, clock, factories
//   model.hpp      Model as an ordered list of Blocks, FLOPs per token
//   optimizer.hpp  Optimizer over explicit tensors, its state as a value
//   width.hpp      μP: how each parameter grows with width, for per-layer steps
//   dataset.hpp    Dataset and deterministic BatchStreams
//   strategy.hpp   Strategy: one rank's training step and evaluation
//   transport.hpp  collectives and point-to-point with accounting
//   comm.hpp       communication schemes (plain, compressed, hierarchical)
//   operators.hpp  the fused operators the host provides (layer norm, cross-entropy)
//
// The kit (plexus/kit/, include what you use) holds helpers a plugin may use and the contract
// never includes: none of it is needed to write a plugin, all of it saves writing one.
//   kit/util.hpp           gradient clipping, norms, seed mixing, flat parameter views
//   kit/replica.hpp        base for strategies where each rank holds the whole model (single, ddp)
//   kit/blocks.hpp         block-wise model handling for strategies that split a model
//   kit/poisson.hpp        seeded Poisson event processes both ends of an edge reproduce
//   kit/graph.hpp          communication graphs and their spectral constants
//   kit/token_windows.hpp  deterministic random-window batches over token arrays (datasets)
//   kit/transformer.hpp    GPT pieces: parameters, layer norm, embedding, attention, MLP
//   kit/loss.hpp           cross_entropy: the next-token loss, its backward in place
//   kit/layer_norm.hpp     layer norm through the host's fused operator
//   kit/compat.hpp         LibTorch 1.13 / 2.x differences (attention, autocast, fused AdamW)
//   kit/weights_file.hpp   named sections of numbers in a text file (learned weights)
//   kit/recompute.hpp      activation checkpointing: a block recomputed in backward
//   kit/whole_tensors.hpp  refuse sharded pieces, for optimizers that need whole tensors
//   kit/mup.hpp            the standard or μP parametrization for a model plugin
#pragma once

#include "plexus/comm.hpp"
#include "plexus/config.hpp"
#include "plexus/context.hpp"
#include "plexus/dataset.hpp"
#include "plexus/error.hpp"
#include "plexus/model.hpp"
#include "plexus/optimizer.hpp"
#include "plexus/plugin.hpp"
#include "plexus/strategy.hpp"
#include "plexus/transport.hpp"
#include "plexus/width.hpp"
