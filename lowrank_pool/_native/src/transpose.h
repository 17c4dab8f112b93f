// Transpositions: dst[i·di + j·dj] = src[i·si + j·sj] in 16 × 16 tiles. Walking a whole row against a whole column
// (rows kilobytes apart, which fall into the same few L1 sets) costs as much as the products; inside a tile the inner
// loop runs along the dimension with the smaller strides, so that the lines it touches at once are the tile's short
// runs on the other side.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "tuning.h"

namespace lp {
// (internal linkage: each translation unit inlines and specialises its own copies, built for its own flags)
namespace {

template <typename T>
void copy_tiles(const T* src, int64_t si, int64_t sj, T* dst, int64_t di, int64_t dj, int64_t rows, int64_t cols) {
  const bool rows_inner = std::max(std::abs(si), std::abs(di)) < std::max(std::abs(sj), std::abs(dj));
  for (int64_t i0 = 0; i0 < rows; i0 += kCopyTile)
    for (int64_t j0 = 0; j0 < cols; j0 += kCopyTile) {
      const int64_t i1 = std::min(rows, i0 + kCopyTile), j1 = std::min(cols, j0 + kCopyTile);
      if (rows_inner) {
        for (int64_t j = j0; j < j1; ++j)
          for (int64_t i = i0; i < i1; ++i) dst[i * di + j * dj] = src[i * si + j * sj];
      } else {
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = j0; j < j1; ++j) dst[i * di + j * dj] = src[i * si + j * sj];
      }
    }
}

// `blocks` transpositions of rows × cols at src + b·sb / dst + b·db, their tiles split into tasks of about tuning
// copy_grain numbers over every thread
template <typename T>
void copy_tiles_parallel(const T* src, int64_t sb, int64_t si, int64_t sj, T* dst, int64_t db, int64_t di, int64_t dj,
                         int64_t blocks, int64_t rows, int64_t cols) {
  const int64_t tiles = (rows + kCopyTile - 1) / kCopyTile;
  const int64_t grain = std::max<int64_t>(1, tuning().copy_grain / (kCopyTile * std::max<int64_t>(1, cols)));
  at::parallel_for(0, blocks * tiles, grain, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t b = q / tiles, r0 = (q % tiles) * kCopyTile;
      copy_tiles(src + b * sb + r0 * si, si, sj, dst + b * db + r0 * di, di, dj, std::min(kCopyTile, rows - r0), cols);
    }
  });
}

}  // namespace
}  // namespace lp
