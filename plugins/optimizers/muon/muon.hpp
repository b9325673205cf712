// optimizers/muon's orthogonalization, a function the tests call directly.
#pragma once

#include <algorithm>

#include <torch/torch.h>

namespace plexus::muon {

// Newton-Schulz's quintic iteration towards the orthogonal factor of G (UV^T for G = USV^T):
// X <- a X + (b A + c A^2) X with A = X X^T, from X = G / (|G|_F + 1e-7), so that every singular
// value starts in (0, 1]. Each step maps a singular value s to a s + b s^3 + c s^5; the
// coefficients (3.4445, -4.7750, 2.0315: a steep slope at 0, not convergence to 1) leave them
// between about 0.7 and 1.2 after 5 steps, which trains as well as UV^T (Jordan et al.'s Muon,
// github.com/KellerJordan/Muon muon.py @00ba60d). Works on the wide orientation (rows <= cols),
// so that A is the smaller Gram matrix.
inline torch::Tensor newton_schulz(const torch::Tensor& g, int steps) {
    constexpr double a = 3.4445, b = -4.7750, c = 2.0315;
    const bool tall = g.size(-2) > g.size(-1);
    auto x = tall ? g.transpose(-2, -1) : g;
    x = x / (x.norm() + 1e-7);
    for (int i = 0; i < steps; ++i) {
        auto gram = torch::matmul(x, x.transpose(-2, -1));
        x = a * x + torch::matmul(b * gram + c * torch::matmul(gram, gram), x);
    }
    return tall ? x.transpose(-2, -1) : x;
}

}  // namespace plexus::muon
