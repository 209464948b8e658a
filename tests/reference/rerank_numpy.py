"""The well-known per-row NumPy k-reciprocal re-ranking (Zhong et al., CVPR 2017).

This is the straightforward formulation that torchreid (`torchreid/utils/rerank.py`)
and fast-reid ship, derived from the authors' code, with the conventions the fsaf-jax
implementation states explicitly:

- the input distances are used as given (torchreid additionally squares its inputs;
  the authors' feature-based code uses squared Euclidean distances, which is what
  `distance.pairwise_distance(metric='euclidean')` returns, and for L2-normalised
  features the cosine distance is half of it, which the normalisation cancels);
- every array is float32 (the original keeps V and the Jaccard distance in float16);
- ties in the initial ranking are broken by index: `np.argsort(kind='stable')`.

It allocates several dense [Q+G, Q+G] arrays (gigabytes at Market-1501 scale), so
tests and the benchmark run it at small scale.
"""

from __future__ import annotations

import numpy as np


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
  """Returns the re-ranked [Q, G] float32 distance matrix."""
  q_g_dist = np.asarray(q_g_dist, np.float32)
  q_q_dist = np.asarray(q_q_dist, np.float32)
  g_g_dist = np.asarray(g_g_dist, np.float32)
  original_dist = np.concatenate(
    [
      np.concatenate([q_q_dist, q_g_dist], axis=1),
      np.concatenate([q_g_dist.T, g_g_dist], axis=1),
    ],
    axis=0,
  )
  original_dist = np.transpose(original_dist / np.max(original_dist, axis=0))
  V = np.zeros_like(original_dist, dtype=np.float32)
  initial_rank = np.argsort(original_dist, axis=1, kind="stable").astype(np.int32)

  query_num = q_g_dist.shape[0]
  gallery_num = q_g_dist.shape[0] + q_g_dist.shape[1]
  all_num = gallery_num

  for i in range(all_num):
    # k-reciprocal neighbors
    forward_k_neigh_index = initial_rank[i, : k1 + 1]
    backward_k_neigh_index = initial_rank[forward_k_neigh_index, : k1 + 1]
    fi = np.where(backward_k_neigh_index == i)[0]
    k_reciprocal_index = forward_k_neigh_index[fi]
    k_reciprocal_expansion_index = k_reciprocal_index
    for j in range(len(k_reciprocal_index)):
      candidate = k_reciprocal_index[j]
      candidate_forward_k_neigh_index = initial_rank[candidate, : int(np.around(k1 / 2.0)) + 1]
      candidate_backward_k_neigh_index = initial_rank[
        candidate_forward_k_neigh_index, : int(np.around(k1 / 2.0)) + 1
      ]
      fi_candidate = np.where(candidate_backward_k_neigh_index == candidate)[0]
      candidate_k_reciprocal_index = candidate_forward_k_neigh_index[fi_candidate]
      if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > 2.0 / 3 * len(
        candidate_k_reciprocal_index
      ):
        k_reciprocal_expansion_index = np.append(
          k_reciprocal_expansion_index, candidate_k_reciprocal_index
        )

    k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
    weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
    V[i, k_reciprocal_expansion_index] = weight / np.sum(weight)

  original_dist = original_dist[:query_num,]
  if k2 != 1:
    V_qe = np.zeros_like(V, dtype=np.float32)
    for i in range(all_num):
      V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
    V = V_qe
    del V_qe
  del initial_rank
  invIndex = []
  for i in range(gallery_num):
    invIndex.append(np.where(V[:, i] != 0)[0])

  jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)

  for i in range(query_num):
    temp_min = np.zeros(shape=[1, gallery_num], dtype=np.float32)
    indNonZero = np.where(V[i, :] != 0)[0]
    indImages = [invIndex[ind] for ind in indNonZero]
    for j in range(len(indNonZero)):
      temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(
        V[i, indNonZero[j]], V[indImages[j], indNonZero[j]]
      )
    jaccard_dist[i] = 1 - temp_min / (2 - temp_min)

  final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
  del original_dist
  del V
  del jaccard_dist
  final_dist = final_dist[:query_num, query_num:]
  return final_dist
