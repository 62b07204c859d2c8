// The upper triangle of a symmetric m × m matrix, packed row by row: what the products that form
// symmetric matrices over the samples compute once per distinct entry (the deep family's diagonal
// blocks, docs/math.md §12.7; the residual's per-unit blocks, §9.3).
#pragma once

#include <ATen/ATen.h>

namespace torch_ws {

struct PackedSymmetric {
  // For each packed entry p ≤ P: its row p and column P, its flat index p·m + P, and how often it
  // stands in the whole matrix (1 on the diagonal, 2 off it, in `options`' dtype); for every flat
  // index of the whole matrix, the packed position holding its value.
  at::Tensor row, col, upper, weight, position;

  PackedSymmetric(int64_t m, const at::TensorOptions& options) {
    const at::Tensor rc = at::triu_indices(m, m, 0, options.dtype(at::kLong));
    row = rc[0];
    col = rc[1];
    upper = row * m + col;
    weight = at::where(row == col, 1.0, 2.0).to(options.dtype());
    position = at::empty({m * m}, options.dtype(at::kLong));
    const at::Tensor order = at::arange(row.size(0), options.dtype(at::kLong));
    position.index_put_({upper}, order);
    position.index_put_({col * m + row}, order);
  }

  int64_t size() const { return row.size(0); }
};

}  // namespace torch_ws
