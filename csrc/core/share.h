// Shares: the sample-space sums split into parts that several processes (the ranks of a
// torch.distributed group) compute independently and then add up (docs/math.md §4.1). tr(H²) is
// a sum over pairs of blocks of samples; each pair goes to exactly one share, and tr H (O(N(D + H))
// work) to share 0, so the shares' traces and gradients sum to the whole ones. The same dealing
// spreads a share's pairs over the CPU lanes.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

namespace torch_ws {

// Part `index` of `count` (count = 1: the whole sums).
struct Share {
  int64_t index = 0, count = 1;

  bool whole() const { return count == 1; }
  // Whether this share holds the per-sample sums (tr H and its gradient).
  bool holds_diagonal() const { return index == 0; }
};

// Deals items of the given costs into `bins`: each item, largest first (ties in index order),
// to the least-loaded bin (ties: the lowest). Returns each item's bin: a function of the costs and
// the bin count alone, so every process computes the same dealing and every result is
// deterministic.
inline std::vector<int64_t> deal_by_cost(const std::vector<double>& costs, int64_t bins) {
  TORCH_INTERNAL_ASSERT(bins >= 1, "deal_by_cost: bins ", bins);
  std::vector<size_t> order(costs.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return costs[a] > costs[b]; });
  std::vector<double> load(bins, 0.0);
  std::vector<int64_t> bin_of(costs.size(), 0);
  for (size_t item : order) {
    const auto bin = std::min_element(load.begin(), load.end()) - load.begin();
    bin_of[item] = bin;
    load[bin] += costs[item];
  }
  return bin_of;
}

}  // namespace torch_ws
