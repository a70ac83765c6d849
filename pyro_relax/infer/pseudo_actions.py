r"""ARSM's pseudo actions, in bounded memory.

A categorical site with logits :math:`\phi` (per plate cell, ``K`` variables of ``C``
categories each) and Dirichlet(1) noise :math:`\pi` samples :math:`z = \arg\min_i (\ln\pi_i -
\phi_i)`; the pseudo action :math:`z^{c \rightleftharpoons j}` swaps :math:`\pi_c` and
:math:`\pi_j` (the same swap for every variable of the cell, Yin, Yue & Zhou 2019). Only three
candidates can win after a swap: :math:`c`, :math:`j` and the smallest of the other entries, so a
pseudo action costs O(1) from the three smallest entries, and all :math:`C^2` of them are computed
in chunks of reference categories, never as a ``C x C x C`` tensor.

A cell's distinct pseudo actions are usually few, and fall as the posterior sharpens (ARSM
paper, Fig. 3): :meth:`SwapTable.distinct` lists them per cell and packs them into rows, so that
one model evaluation serves one distinct action of every cell.
"""

import torch

__all__ = ["SwapTable", "CHUNK_ELEMENTS", "pack", "unique_rows"]

#: how many pseudo-action entries a chunk holds (bounds the memory of the swap computation)
CHUNK_ELEMENTS = 2**22


class SwapTable:
    """The swap structure of one categorical site.

    :param torch.Tensor logits: :math:`\\phi`, shape ``(N, K, C)`` (cells, variables per cell,
        categories).
    :param torch.Tensor noise: :math:`\\pi`, the Dirichlet(1) noise, same shape.
    """

    def __init__(self, logits, noise):
        self.log_pi = noise.log()
        self.phi = logits
        self.num_cells, self.num_vars, self.num_categories = logits.shape
        a = self.log_pi - self.phi
        k = min(3, self.num_categories)
        values, indices = a.topk(k, -1, largest=False)  # ascending
        if k < 3:  # C = 2: pad with a candidate that never wins
            pad = 3 - k
            values = torch.cat([values, values.new_full(values.shape[:-1] + (pad,), float("inf"))], -1)
            indices = torch.cat([indices, indices.new_full(indices.shape[:-1] + (pad,), -1)], -1)
        self.top_values, self.top_indices = values, indices
        self.sample = indices[..., 0]  # (N, K)

    def actions(self, cs, js):
        """Pseudo actions :math:`z^{c \\rightleftharpoons j}` for the pairs ``(cs[m], js[m])``.

        :returns: a long tensor ``(M, N, K)``.
        """
        c = cs.reshape(-1, 1, 1)
        j = js.reshape(-1, 1, 1)
        log_pi, phi = self.log_pi, self.phi
        a_c = _take(log_pi, j) - _take(phi, c)  # the swapped entries
        a_j = _take(log_pi, c) - _take(phi, j)
        idx, val = self.top_indices, self.top_values
        best_val = val[..., 2].expand(a_c.shape)
        best_idx = idx[..., 2].expand(a_c.shape)
        for t in (1, 0):  # the smallest of the other entries
            free = (idx[..., t] != c) & (idx[..., t] != j)
            best_val = torch.where(free, val[..., t], best_val)
            best_idx = torch.where(free, idx[..., t], best_idx)
        out = torch.where(a_c < a_j, c.expand(a_c.shape), j.expand(a_c.shape))
        out_val = torch.minimum(a_c, a_j)
        return torch.where(best_val < out_val, best_idx, out)

    def _reference_chunks(self, references):
        """Chunks of reference categories ``j`` whose ``C`` swaps each fit in memory."""
        per_reference = self.num_categories * self.num_cells * self.num_vars
        size = max(1, CHUNK_ELEMENTS // max(1, per_reference))
        for start in range(0, len(references), size):
            yield references[start : start + size]

    def _pairs_for(self, js):
        C = self.num_categories
        cs = torch.arange(C, device=js.device).repeat(len(js))
        return cs, js.repeat_interleave(C)

    def distinct(self, references=None):
        """Each cell's distinct pseudo actions other than its sample, over the swaps with the
        given reference categories (all by default), packed into rows.

        :returns: ``(rows, valid, counts)``: ``rows`` a long tensor ``(R, N, K)`` with
            ``R = max counts``, row ``r`` holding cell ``n``'s ``r``-th distinct action where
            ``valid[r, n]`` (the sample elsewhere); ``counts`` the number per cell.
        """
        N, K, C = self.num_cells, self.num_vars, self.num_categories
        device = self.phi.device
        if references is None:
            references = torch.arange(C, device=device)
        if K == 1:
            seen = torch.zeros(N, C, dtype=torch.bool, device=device)
            for js in self._reference_chunks(references):
                cs, jj = self._pairs_for(js)
                z = self.actions(cs, jj)[..., 0]  # (M, N)
                seen.scatter_(1, z.t(), True)
            seen.scatter_(1, self.sample, False)
            counts = seen.sum(-1)
            R = int(counts.max()) if N else 0
            order = (~seen).to(torch.int8).argsort(dim=-1, stable=True)[:, :R]  # seen first
            valid = (torch.arange(R, device=device).unsqueeze(-1) < counts).reshape(R, N)
            rows = torch.where(valid, order.t(), self.sample[:, 0].expand(R, N))
            return rows.unsqueeze(-1), valid, counts
        keys, vectors = None, None
        for js in self._reference_chunks(references):
            cs, jj = self._pairs_for(js)
            z = self.actions(cs, jj)  # (M, N, K)
            differs = (z != self.sample).any(-1)  # (M, N)
            m, n = differs.nonzero(as_tuple=True)
            chunk = z[m, n]
            chunk_keys = pack(n, chunk, C)
            if keys is not None:
                chunk_keys, chunk = torch.cat([keys, chunk_keys]), torch.cat([vectors, chunk])
            keys, index = unique_rows(chunk_keys)
            vectors = chunk.new_empty((len(keys), K))
            vectors[index] = chunk
        if keys is not None:  # group by cell
            order = keys[:, 0].argsort(stable=True)
            keys, vectors = keys[order], vectors[order]
        if keys is None or not len(keys):
            counts = torch.zeros(N, dtype=torch.long, device=device)
            return self.sample.new_zeros((0, N, K)), torch.zeros(0, N, dtype=torch.bool, device=device), counts
        owner = keys[:, 0]
        counts = torch.bincount(owner, minlength=N)
        R = int(counts.max())
        start = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(keys), device=device) - start[owner]  # keys are sorted by cell
        rows = self.sample.unsqueeze(0).repeat(R, 1, 1)
        rows[slot, owner] = vectors
        valid = torch.zeros(R, N, dtype=torch.bool, device=device)
        valid[slot, owner] = True
        return rows, valid, counts

    def gradient(self, lookup, references=None, rao_blackwellize=False):
        """ARSM's gradient with respect to the logits,
        :math:`\\frac1J \\sum_j \\big(f(z^{c \\rightleftharpoons j}) - \\frac1C \\sum_m
        f(z^{m \\rightleftharpoons j})\\big)(1 - C\\pi_j)`, averaged over the ``J`` given
        references (all ``C`` by default: ARSM; one drawn uniformly: ARS).

        With ``rao_blackwellize=True`` (ARS+ / ARSM+) each reference's weight
        :math:`\\pi_j` is replaced by its conditional mean (:meth:`expected_reference`) and the
        term of a variable whose pseudo actions for that reference all agree is dropped (its
        conditional mean given that variable's noise is zero).

        :param lookup: ``lookup(actions, cs, js) -> f``: ``actions`` a long tensor
            ``(M, N, K)`` of the pseudo actions of the swaps ``(cs[m], js[m])``, ``f`` the
            cells' learning signals at them, ``(M, N)``.
        :returns: a tensor ``(N, K, C)``.
        """
        N, K, C = self.num_cells, self.num_vars, self.num_categories
        if references is None:
            references = torch.arange(C, device=self.phi.device)
        grad = self.phi.new_zeros(N, K, C)
        pi = self.log_pi.exp()
        for js in self._reference_chunks(references):
            cs, jj = self._pairs_for(js)
            actions = self.actions(cs, jj)
            f = lookup(actions, cs, jj).reshape(len(js), C, N)
            f = f - f.mean(1, keepdim=True)  # (J, C, N)
            if rao_blackwellize:
                actions = actions.reshape(len(js), C, N, K)
                mean_pi = self.expected_reference(js, actions)
                weight = (1.0 - C * mean_pi) * (~self.agreement(actions)).to(pi.dtype)
            else:
                weight = 1.0 - C * pi[..., js]  # (N, K, J)
            grad = grad + torch.einsum("jcn,nkj->nkc", f, weight)
        return grad / len(references)

    @staticmethod
    def agreement(actions):
        """The symmetry step's indicator: for each variable and reference ``j``, whether its
        pseudo actions :math:`z^{m \\rightleftharpoons j}` agree for every ``m``.

        :param torch.Tensor actions: ``(J, C, N, K)`` pseudo actions.
        :returns: a bool tensor ``(N, K, J)``.
        """
        return (actions == actions[:, :1]).all(1).permute(1, 2, 0)

    def expected_reference(self, references, actions=None):
        """:math:`E[\\pi_j \\mid \\cdot]` for each reference ``j``: the conditional mean of the
        reference coordinate given the pseudo actions :math:`z^{m \\rightleftharpoons j}`
        (``m = 1..C``) and every coordinate but :math:`\\pi_j` and one other, :math:`\\pi_o`, which
        absorbs the change (:math:`\\pi_j + \\pi_o = r` fixed), averaged over the ``C - 1``
        choices of ``o``.

        Given those, :math:`\\pi_j` is uniform (Dirichlet(1) is uniform on the simplex) on the
        values that reproduce every observed pseudo action. Each one is an interval: with
        :math:`x = \\pi_j`, a pseudo action's entries :math:`\\ln\\pi_i - \\phi_i` are one
        increasing in :math:`x` (``I``: where :math:`x` sits), one decreasing (``D``: where
        :math:`r - x` sits) and fixed ones (smallest ``F``); winning ``I`` means
        :math:`x < \\min(e^{F + \\phi_I}, r\\sigma(\\phi_I - \\phi_D))`, winning ``D`` means
        :math:`x > \\max(r - e^{F + \\phi_D}, r\\sigma(\\phi_I - \\phi_D))` and a fixed winner means
        :math:`e^{F + \\phi_I} < x < r - e^{F + \\phi_D}`. The conditional mean is the midpoint of
        the intersection.

        :param torch.Tensor references: ``(J,)`` reference categories.
        :param torch.Tensor actions: optional ``(J, C, N, K)`` pseudo actions
            :math:`z^{m \\rightleftharpoons j}` (computed if omitted).
        :returns: a tensor ``(N, K, J)``.
        """
        N, K, C = self.num_cells, self.num_vars, self.num_categories
        J = len(references)
        device = self.phi.device
        if actions is None:
            cs, jj = self._pairs_for(references)
            actions = self.actions(cs, jj).reshape(J, C, N, K)
        top = (self.log_pi - self.phi).topk(min(4, C), -1, largest=False)  # (N, K, k)
        # all (reference, absorber) pairs with o != j, in chunks of whole pseudo-action sets
        jr = torch.arange(J, device=device).repeat_interleave(C)
        oo = torch.arange(C, device=device).repeat(J)
        keep = oo != references[jr]
        jr, oo = jr[keep], oo[keep]
        total = self.phi.new_zeros(J, N, K)
        size = max(1, CHUNK_ELEMENTS // max(1, C * N * K))
        for start in range(0, len(jr), size):
            jrow, o = jr[start : start + size], oo[start : start + size]
            mid = self._interval_midpoints(references[jrow], o, actions[jrow], top)
            total.index_add_(0, jrow, mid)
        return (total / (C - 1)).permute(1, 2, 0)

    def _interval_midpoints(self, j, o, w, top):
        """The midpoint of the interval of :math:`\\pi_j` (see :meth:`expected_reference`) for
        ``P`` (reference ``j``, absorber ``o``) pairs with pseudo actions ``w``
        ``(P, C, N, K)``; ``top``: the smallest entries of :math:`\\ln\\pi - \\phi`. Returns
        ``(P, N, K)``."""
        N, K, C = self.num_cells, self.num_vars, self.num_categories
        log_pi, phi = self.log_pi, self.phi
        P = len(j)
        m = torch.arange(C, device=phi.device).reshape(1, C, 1, 1)
        jv, ov = j.reshape(P, 1, 1, 1), o.reshape(P, 1, 1, 1)

        def at(x, index):  # x (N, K, C), index (P, 1, 1, 1) or m -> (P or 1, C or 1, N, K)
            return x.permute(2, 0, 1)[index.reshape(-1)].reshape(index.shape[:2] + (N, K))

        lp_j, lp_o = at(log_pi, jv), at(log_pi, ov)
        phi_j, phi_o = at(phi, jv), at(phi, ov)
        lp_m, phi_m = at(log_pi, m), at(phi, m)
        r = lp_j.exp() + lp_o.exp()
        is_j, is_o = m == jv, m == ov
        inc = torch.where(is_j, jv, torch.where(is_o, ov, m)).expand(P, C, 1, 1)
        dec = torch.where(is_o, jv, ov).expand(P, C, 1, 1)
        phi_inc = torch.where(is_j, phi_j, torch.where(is_o, phi_o, phi_m))
        phi_dec = torch.where(is_o, phi_j, phi_o)
        # F: the smallest fixed entry, over i not in {j, o, m}; and, for m not in {j, o},
        # the swapped-in entry log pi_m - phi_j at position j
        top_val, top_idx = top
        F = torch.full((P, C, N, K), float("inf"), dtype=phi.dtype, device=phi.device)
        for t in range(top_val.shape[-1] - 1, -1, -1):
            idx, val = top_idx[..., t], top_val[..., t]
            free = (idx != jv) & (idx != ov) & (idx != m)
            F = torch.where(free, val, F)
        F = torch.where(is_j | is_o, F, torch.minimum(F, lp_m - phi_j))
        s = r * torch.sigmoid(phi_inc - phi_dec)
        e_inc, e_dec = (F + phi_inc).exp(), (F + phi_dec).exp()
        win_inc, win_dec = w == inc, w == dec
        lower = torch.where(win_inc, torch.zeros_like(s),
                            torch.where(win_dec, torch.maximum(r - e_dec, s), e_inc))
        upper = torch.where(win_inc, torch.minimum(e_inc, s),
                            torch.where(win_dec, r.expand_as(s), r - e_dec))
        lo = lower.amax(1).clamp(min=0.0)  # (P, N, K)
        hi = torch.minimum(upper.amin(1), r[:, 0])
        return 0.5 * (lo + hi)


def pack(cells, actions, num_categories):
    """Exact integer keys for ``(cell, action vector)`` pairs: the vector's digits (base
    ``2**bits``) packed into as few int64 words as hold them, after the cell index.

    :param torch.Tensor cells: ``(M,)`` cell indices.
    :param torch.Tensor actions: ``(M, K)`` categories.
    :returns: ``(M, 1 + W)`` int64 keys; equal keys iff equal pairs.
    """
    bits = max(1, int(num_categories - 1).bit_length())
    per_word = max(1, 62 // bits)
    words = [cells.reshape(-1, 1)]
    for start in range(0, actions.shape[-1], per_word):
        digits = actions[:, start : start + per_word]
        shifts = torch.arange(digits.shape[-1], device=digits.device) * bits
        words.append((digits << shifts).sum(-1, keepdim=True))
    return torch.cat(words, -1)


_HASH_GENERATOR = torch.Generator().manual_seed(20191)  # its own stream: the user's is untouched


def unique_rows(keys):
    """``torch.unique(keys, dim=0, return_inverse=True)`` for int64 rows, through a 1-d unique
    of a row hash (much faster on CPU); a hash collision is detected by comparing every row with
    its group's representative, and then the exact row-wise unique is used.

    :returns: ``(unique_keys, inverse)``; unique keys in first-occurrence order of their hash
        (not sorted).
    """
    if keys.shape[1] == 1:
        unique, inverse = torch.unique(keys[:, 0], return_inverse=True)
        return unique.unsqueeze(-1), inverse
    if keys.shape[0] <= 1:
        return keys, torch.zeros(keys.shape[0], dtype=torch.long, device=keys.device)
    # a random linear hash; int64 products and sums wrap around
    weights = torch.randint(
        1, 2**62, (keys.shape[1],), generator=_HASH_GENERATOR
    ).to(keys.device)
    h = (keys * weights).sum(-1)
    hashes, inverse = torch.unique(h, return_inverse=True)
    first = torch.full((len(hashes),), len(keys), dtype=torch.long, device=keys.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(keys), device=keys.device), "amin")
    unique = keys[first]
    if bool((unique[inverse] != keys).any()):  # a collision: the exact, slower way
        return torch.unique(keys, dim=0, return_inverse=True)
    return unique, inverse


def _take(x, index):
    """``x[n, k, index[m]]`` for ``x`` of shape ``(N, K, C)`` and ``index`` ``(M, 1, 1)``:
    shape ``(M, N, K)``."""
    return x.permute(2, 0, 1)[index.reshape(-1)]
