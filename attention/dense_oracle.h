/* dense_oracle.h: the brute-force definition of dilated attention, in double
 * precision, written straight from the semantics (for each query: list every
 * (pattern, key) occurrence of the multiset union, then one dense softmax).
 * O(tokens * keys) time, no blocking, no cleverness: it is what the fast paths
 * (CPU and CUDA) are tested against, and what `da demo` checks a slice with.
 * Layouts are those of dilated_attention.h, with double elements. */
#ifndef DA_ATTENTION_DENSE_ORACLE_H
#define DA_ATTENTION_DENSE_ORACLE_H

#include <stdint.h>

#include "attention/dilated_attention.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Forward pass for query tokens [token_begin, token_end) only (a slice of the
 * packed token range). out holds (token_end - token_begin) * h * d values and lse
 * (token_end - token_begin) * h, both indexed from token_begin. Keys come from
 * the whole of q/k/v as usual. Uncovered queries: out = 0, lse = -inf. */
da_status da_oracle_forward(const da_attention_params* params, const da_attention_batch* batch,
                            const double* q, const double* k, const double* v,
                            int64_t token_begin, int64_t token_end, double* out, double* lse);

/* Exact gradient of the forward function over all tokens, by the textbook
 * formulas of the semantics (D = dO.O, dS = P (dO.v - D), ...), evaluated densely.
 * Overwrites dq, dk, dv. */
da_status da_oracle_backward(const da_attention_params* params, const da_attention_batch* batch,
                             const double* q, const double* k, const double* v,
                             const double* dout, double* dq, double* dk, double* dv);

/* Multiset size |K(p, j)| summed over all queries and heads: the pair count the
 * oracle actually visits (tests compare it with da_attention_count_pairs). */
da_status da_oracle_count_pairs(const da_attention_params* params, const da_attention_batch* batch,
                                int64_t* pairs);

#ifdef __cplusplus
}
#endif

#endif /* DA_ATTENTION_DENSE_ORACLE_H */
