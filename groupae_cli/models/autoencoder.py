"""GroupAE: encoder, group heads and decoder tied together.

encode(X, a) -> z (invariant), R (SO(3)), t (R^3), canonical order (S_n)
decode(z, n) -> canonical coordinates Y and element logits
reconstruction: X_hat = P^T (Y R^T) + t, in the input's frame and order.
model.fit_steps = k: z then fitted to the structure through the decoder (k Adam steps; structures of
at most 29 atoms k / 10 Levenberg-Marquardt steps), the structure laid onto the decoder's drawing
again as it goes (pose and order: the group element too). With model.fit_hold_identity the fit
leaves z's first `embedding_identity` entries (its frame-free part) as the encoder made them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from groupae_cli.data import BATCH, N_ATOMS, POSITIONS, TYPES
from groupae_cli.models._startup import (
    lazy_graph_code,
    prune_unused_einsums,
    write_graph_code,
)
from groupae_cli.models.config import ModelConfig
from groupae_cli.models.decoder import Decoder
from groupae_cli.models.embedding import Refiner, embedding_head
from groupae_cli.models.encoder import Encoder
from groupae_cli.models.graph import Layout, build_edges
from groupae_cli.models.heads import NodeInvariants, RotationHead, centroid
from groupae_cli.models.permutation import (
    ScoreHead,
    canonical_order,
    hard_permutation,
    hydrogens_follow_parents,
    soft_permutation,
)

#: Adam's first step size, epsilon and betas when z is fitted to its structure (`fit_steps`); the
#: step size falls linearly to 0. Adam's steps at a large step size are chaotic: two copies of a
#: structure, 1e-13 apart, can end far apart. A constant step parts them by 1e-2 after 100 steps
#: (bench/RESULTS.md, "Fitting z"); the momentum of 0.95 (not 0.9) damps the oscillation that
#: parts them, and pays for the larger first step (bench/RESULTS.md, "Laid on at every step").
#: A larger epsilon (3e-3) calmed qm9_110387 and made a drug-like structure part instead
#: (bench/RESULTS.md, "Adam's epsilon and the chaotic tail")
FIT_LR, FIT_EPS, FIT_BETAS = 0.12, 1e-3, (0.95, 0.999)
#: from FIT_LATE of the steps on, the momentum is FIT_LATE_BETA1: small structures, fitted closely,
#: spend the fit's middle at the edge of stability, where 0.95 still lets round-off grow into
#: parts of 1e-5; the early steps keep 0.95, which large structures need to be sharp. Adam
#: corrects its first moment's bias with the new beta (m / (1 - 0.98^t)), so the steps just after
#: the change are larger, fading (1.35x at 200 steps, 1.5x at 150, 2x at 10): the fit measured in
#: bench/RESULTS.md ("Momentum that rises")
FIT_LATE, FIT_LATE_BETA1 = 0.3, 0.98
#: on CPU the fit runs on chunks of this many structures of similar size (the decoder's cost is
#: slots x padding: half the time of a mixed batch of 64); on a GPU on the whole batch
FIT_CHUNK = 16
#: the fit's loss per structure is sqrt(mse + FIT_SMOOTH^2) (A), not the RMSD itself: the RMSD's
#: gradient keeps its size as the drawing closes in on the structure (a cone at a perfect fit), so
#: Adam circles the tip and two copies of a structure part ways (bench/RESULTS.md, "A smooth fit").
#: Before every step the structure (in its canonical pose and order) is laid onto what the decoder
#: draws: the within-element order and the proper rigid motion that fit the drawing best
#: (`align.refine`: Hungarian and Kabsch in turn, from the current pose), so each step descends on
#: the structure's RMSD to the drawing up to a rigid motion and renumbering, and at the optimal
#: motion that RMSD's gradient is the one taken. The decoder need not keep drawing atoms in the
#: encoder's order (bench/RESULTS.md, "The fit re-lays the structure"); laid on only every 5 steps,
#: the fit lags behind the pose and copies of a structure part ways ("Laid on at every step")
FIT_SMOOTH = 0.05
#: structures of at most FIT_LM_ATOMS atoms are fitted by Levenberg-Marquardt instead, one damped
#: Gauss-Newton step on the squared residuals per FIT_LM_RATIO Adam steps. However tuned, Adam's fit
#: stayed chaotic on a rare few small structures (qm9_110387: copies 1e-13 apart ended 7e-3 of z's
#: scale apart, in different minima); a Gauss-Newton step stays in the row space of the decoder's
#: Jacobian, so round-off cannot wander along the flat directions, and such copies end within 1e-10.
#: At 20 steps it draws held-out QM9 molecules at 0.116 A median against Adam's 0.122, with a longer
#: tail (p90 0.378 against 0.344); on large structures it is no sharper and its Jacobian (3n backward
#: rows) costs more (bench/RESULTS.md, "Levenberg-Marquardt again", "The split fit, shipped").
#: Up to 29 atoms, all of QM9, since the distilled default: its decoder under Adam parted copies of
#: two 25-atom QM9 molecules (z 1.8e-4 and 1.6e-5 of its scale apart; issue 10 allows 1e-5), where
#: Levenberg-Marquardt kept every copy of the 431 held-out structures of 25-29 atoms within 1e-10,
#: at about 4x Adam's time there (2.5-4x since an undone step's Jacobian is kept) and a little less
#: sharp (QM9 0.444 A median against 0.425; "Up to 29 atoms by Levenberg-Marquardt", "Every held-out
#: structure, and the Jacobian kept").
#: The damping starts at FIT_LM_DAMPING times the mean of diag(J^T J), is divided by FIT_LM_DOWN
#: after a step that lowers the error and multiplied by FIT_LM_UP otherwise (the step undone). The
#: atom count is exact, so every copy of a structure is fitted the same way.
FIT_LM_ATOMS, FIT_LM_RATIO = 29, 10
FIT_LM_DAMPING, FIT_LM_DOWN, FIT_LM_UP = 0.3, 1.5, 2.0
#: the Levenberg-Marquardt part of a chunk is fitted this many structures at a time: its Jacobian
#: holds 3n rows of z's size per structure (with what the batched backward pass keeps, about 20 MB
#: per structure of 24 atoms in float64 on a GPU, measured; growing as 3n times n, so about 30 MB at
#: 29 by that estimate), so a GPU batch of 1,024 at once would need 20-30 GB, 256 at a time 5-8 GB.
#: On the CPU one at a time (FIT_LM_CHUNK_CPU): the backward pass batched over the 3n rows is
#: elementwise work on (3n, structures, n, 128) arrays there, bound by memory, and one structure's
#: stay in cache: the fit of small structures 1.8x faster than 16 at a time, the same to round-off
#: (bench/RESULTS.md, "The split fit, shipped")
FIT_LM_CHUNK, FIT_LM_CHUNK_CPU = 256, 1


def fit_hold_refusal(model) -> str | None:
    """Why `model` cannot fit with `fit_hold_identity` as set, or None: holding z's frame-free part
    needs a model whose z has one apart from the rest (`embedding_identity` > 0). Without it
    (a mean-pooled z is frame-free throughout; a canonical one has no frame-free entries) there
    is no part to hold, and the fit would quietly move the whole z while saying it held part."""
    if model.fit_steps and model.fit_hold_identity and not model.config.embedding_identity:
        return ("--fit-hold-identity: this model's z has no separate frame-free part (embedding_identity 0), "
                "so there is nothing to hold; fit the whole z (--fit-whole-z)")
    return None


class GroupAE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        with lazy_graph_code():
            self.encoder = Encoder(config)
            self.invariants = NodeInvariants(config)
            self.embedding = embedding_head(config, self.invariants.dim)
            self.rotation = RotationHead(config)
            self.scores = ScoreHead(self.invariants.dim, config.score_hidden)
            self.decoder = Decoder(config)
            self.refiners = nn.ModuleList(Refiner(config) for _ in range(config.refine_steps))
        prune_unused_einsums(self)
        write_graph_code(self)
        #: an inference setting, not part of the checkpoint: encode fits z to each structure by this
        #: many steps (`fit`); training leaves it at 0
        self.fit_steps = 0
        #: with `fit_steps`: the fit moves only z[:, embedding_identity:] and leaves the frame-free
        #: part as the encoder made it (a better descriptor than the fully fitted z: bench/RESULTS.md,
        #: "A fit that holds the frame-free part")
        self.fit_hold_identity = False

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the weights: batches must be built in it."""
        return next(self.parameters()).dtype

    def encode(self, batch: dict[str, torch.Tensor], tie_noise: float = 0.0) -> dict[str, torch.Tensor]:
        """The invariant embedding and the predicted group element of each structure.

        Returns z (B, d), rotation (B, 3, 3), translation (B, 3), scores (A,), order (B, N) (the
        input atom in each canonical slot; padding last), canonical (B, N, 3) ((X - t) R in input
        order), frame_degenerate (B,), frame_conditioning (B,) (see RotationHead), ties (B,), and
        the layout. `tie_noise` (training only) jitters the scores to break ties at random. With
        `self.fit_steps`, z is then fitted to the structure (`fit`; with `self.fit_hold_identity`
        its frame-free part is held).
        """
        c = self.config
        x, types = batch[POSITIONS], batch[TYPES]
        layout = Layout(batch[BATCH], batch[N_ATOMS])
        src, dst = build_edges(x, layout, c.graph, c.cutoff, c.knn)
        h = self.encoder(x, types, src, dst)
        inv = self.invariants(h)
        translation = centroid(x, layout)
        rotation, frame_degenerate, frame_conditioning = self.rotation(h, layout, x, translation)
        canonical = (layout.to_dense(x) - translation[:, None]) @ rotation  # (X - t) R, input order
        flat_canonical = layout.to_flat(canonical)
        scores = self.scores(inv, flat_canonical)
        if tie_noise:
            scores = scores + tie_noise * torch.randn_like(scores)
        if c.hydrogen_order == "parent" and 1 in c.elements:
            dense = hydrogens_follow_parents(layout.to_dense(scores), layout.to_dense(types), canonical, layout.mask,
                                             c.elements.index(1), c.tie_tol)
            scores = layout.to_flat(dense)
        order, ties = canonical_order(layout.to_dense(scores), layout.to_dense(types), canonical, layout.mask,
                                      tie_tol=c.tie_tol)
        extra = {"order": order} if c.pool_slot_codes else {}
        z = self.embedding(inv, h, flat_canonical, rotation, types, layout, **extra)
        if len(self.refiners):
            z = self.refine(z, canonical, types, order, layout)
        if self.fit_steps:
            refused = fit_hold_refusal(self)
            if refused:
                raise ValueError(refused)
            hold = c.embedding_identity if self.fit_hold_identity else 0
            z, turn, shift, slots = self.fit(z, canonical, types, order, layout, self.fit_steps, hold=hold)
            # the fit's corrections are invariant (they come from z and the canonical structure),
            # so the group element they amend stays equivariant: (X - t') R' = ((X - t) R - shift) turn
            translation = translation + torch.einsum("bj,bij->bi", shift, rotation)
            rotation = rotation @ turn
            order = order.gather(1, slots)
            canonical = (layout.to_dense(x) - translation[:, None]) @ rotation
        return {"z": z, "rotation": rotation, "translation": translation, "scores": scores, "order": order,
                "canonical": canonical, "frame_degenerate": frame_degenerate, "frame_conditioning": frame_conditioning,
                "ties": ties, "layout": layout}

    def refine(self, z: torch.Tensor, canonical: torch.Tensor, types: torch.Tensor, order: torch.Tensor,
               layout: Layout) -> torch.Tensor:
        """z after `refine_steps` learned corrections of its canonical-frame part, each from what the
        decoder draws of the current z beside the structure in its canonical pose and order."""
        slot_types, target = _slot_types(types, order, layout), _ordered(canonical, order, layout)
        identity = self.config.embedding_identity
        for refiner in self.refiners:
            y, _, hidden = self.decoder.slots(z, layout.n_atoms, layout.n_max, slot_types)
            z = torch.cat([z[:, :identity], z[:, identity:] + refiner(hidden, target, y, layout)], -1)
        return z

    def fit(self, z: torch.Tensor, canonical: torch.Tensor, types: torch.Tensor, order: torch.Tensor,
            layout: Layout, steps: int, lr: float = FIT_LR, hold: int = 0) -> tuple[torch.Tensor, ...]:
        """z fitted to each structure from the encoder's guess (which the weights alone cannot make
        exact: bench/decoder_reach.py): the code from which the decoder draws the structure in its
        canonical pose and order most closely. Structures of more than `FIT_LM_ATOMS` atoms take
        `steps` Adam steps (step size falling linearly from `lr` to 0) on the RMSD between the
        drawing and the structure (smoothed at 0: `FIT_SMOOTH`); the others ceil(steps /
        `FIT_LM_RATIO`) Levenberg-Marquardt steps on the squared distances. Before every step and
        after the last, the structure is laid again onto the drawing (`_relay`). The first `hold`
        entries of z are held as given: only z[:, hold:] is fitted.

        Returns (z, turn (B, 3, 3), shift (B, 3), slots (B, N)): the structure in its canonical
        pose and order, C, becomes (C[slots] - shift) turn, a proper rigid motion and a renumbering
        within elements. Each structure's steps are its own (Adam's loss is a sum and Adam works
        per entry; Levenberg-Marquardt's damping is per structure), so a batch fits as its records
        one by one; the target and the drawing are invariant, so the fitted z and the corrections
        are too. Runs with gradients even under no_grad or inference_mode; the weights are not
        changed.
        """
        slot_types, target = _slot_types(types, order, layout), _ordered(canonical, order, layout)
        n_atoms = layout.n_atoms
        by_size = torch.argsort(n_atoms, stable=True)
        chunks = by_size.split(len(z) if z.is_cuda else FIT_CHUNK)
        parts = []
        with torch.inference_mode(False), torch.enable_grad():
            for chunk in chunks:
                n_max = int(n_atoms[chunk].max())
                # copies: tensors made under inference mode cannot be saved for the backward pass
                parts.append(self._fit_chunk(z[chunk].clone(), slot_types[chunk, :n_max].clone(),
                                             target[chunk, :n_max].clone(), n_atoms[chunk].clone(), steps, lr,
                                             hold))
        back = torch.argsort(by_size)  # back in the batch's order
        z, turn, shift = (torch.cat([part[k] for part in parts])[back] for k in range(3))
        slots = torch.arange(layout.n_max, device=z.device).repeat(len(z), 1)
        for chunk, part in zip(chunks, parts, strict=True):
            slots[chunk, : part[3].shape[1]] = part[3]
        return z, turn, shift, slots

    def _fit_chunk(self, z: torch.Tensor, slot_types: torch.Tensor, target: torch.Tensor, n_atoms: torch.Tensor,
                   steps: int, lr: float, hold: int) -> tuple[torch.Tensor, ...]:
        """`fit` on one chunk: its structures of at most `FIT_LM_ATOMS` atoms by `_lm_fit`
        (`FIT_LM_CHUNK` at a time, on the CPU `FIT_LM_CHUNK_CPU`), the others by `_adam_fit`, each
        part padded to its own largest structure and laid once more onto its last drawing."""
        b, width = target.shape[:2]
        small = torch.nonzero(n_atoms <= FIT_LM_ATOMS)[:, 0]
        parts = [(idx, lambda *a: self._lm_fit(*a, math.ceil(steps / FIT_LM_RATIO), hold))
                 for idx in small.split(FIT_LM_CHUNK if z.is_cuda else FIT_LM_CHUNK_CPU)]
        parts.append((torch.nonzero(n_atoms > FIT_LM_ATOMS)[:, 0], lambda *a: self._adam_fit(*a, steps, lr, hold)))
        fitted, turn, shift = torch.empty_like(z), z.new_empty(b, 3, 3), z.new_empty(b, 3)
        slots = torch.arange(width, device=z.device).repeat(b, 1)
        for idx, fit in parts:
            if not len(idx):
                continue
            n = int(n_atoms[idx].max())
            types, sizes = slot_types[idx, :n], n_atoms[idx]
            part, laid, *corrections = fit(z[idx], types, target[idx, :n], sizes)
            with torch.no_grad():
                y, _, _ = self.decoder.slots(part, sizes, n, types)
            _, turn[idx], shift[idx], slots[idx, :n] = _relay(y, laid, types, sizes, *corrections)
            fitted[idx] = part
        return fitted, turn, shift, slots

    def _adam_fit(self, z: torch.Tensor, slot_types: torch.Tensor, target: torch.Tensor, n_atoms: torch.Tensor,
                  steps: int, lr: float, hold: int = 0) -> tuple[torch.Tensor, ...]:
        """`_fit_chunk`'s Adam part: Adam steps on the smoothed RMSD of z[:, hold:], the structure laid
        on before each step. Returns (z, the structure as last laid on, turn, shift, slots)."""
        held, free = z[:, :hold].detach(), z[:, hold:].detach().requires_grad_(True)
        b, n = target.shape[:2]
        mask = torch.arange(n, device=z.device)[None, :] < n_atoms[:, None]
        turn, shift, slots = _unmoved(b, n, z)
        optimizer = torch.optim.Adam([free], lr=lr, eps=FIT_EPS, betas=FIT_BETAS)
        schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=steps)
        late = math.ceil(FIT_LATE * steps - 1e-9)
        for step in range(steps):
            if step == late:
                optimizer.param_groups[0]["betas"] = (FIT_LATE_BETA1, FIT_BETAS[1])
            y, _, _ = self.decoder.slots(torch.cat([held, free], 1), n_atoms, n, slot_types)
            target, turn, shift, slots = _relay(y.detach(), target, slot_types, n_atoms, turn, shift, slots)
            mse = (((y - target) ** 2).sum(-1) * mask).sum(1) / n_atoms
            (free.grad,) = torch.autograd.grad((mse + FIT_SMOOTH**2).sqrt().sum(), free)
            with torch.device("cpu"):  # torch < 2.13's Adam makes its step counter on the default device
                optimizer.step()
            schedule.step()
        return torch.cat([held, free.detach()], 1), target, turn, shift, slots

    def _lm_fit(self, z: torch.Tensor, slot_types: torch.Tensor, target: torch.Tensor, n_atoms: torch.Tensor,
                steps: int, hold: int = 0) -> tuple[torch.Tensor, ...]:
        """`_fit_chunk`'s Levenberg-Marquardt part: damped Gauss-Newton steps in z[:, hold:] on the
        squared distances between the drawing and the structure, laid on before each step. Returns
        as `_adam_fit`."""
        b, n = target.shape[:2]
        z = z.detach().clone()
        mask = (torch.arange(n, device=z.device)[None, :] < n_atoms[:, None]).to(z.dtype)
        turn, shift, slots = _unmoved(b, n, z)
        damping = torch.full((b,), FIT_LM_DAMPING, dtype=z.dtype, device=z.device)
        eye = torch.eye(z.shape[1] - hold, dtype=z.dtype, device=z.device)
        # a structure whose step was undone keeps its z, so its drawing and Jacobian (which depend on
        # z alone) are kept too: only the others' are computed again (15-30% of the steps are undone)
        y, jacobian = target.new_empty(b, n, 3), z.new_empty(b, 3 * n, z.shape[1] - hold)
        moved = torch.ones(b, dtype=torch.bool, device=z.device)
        for _ in range(steps):
            if moved.any():
                again = torch.nonzero(moved)[:, 0]
                y[again], jacobian[again] = self._drawing_and_jacobian(z[again], slot_types[again], n_atoms[again], hold)
                jacobian[again] *= mask[again].repeat_interleave(3, 1)[:, :, None]
            target, turn, shift, slots = _relay(y, target, slot_types, n_atoms, turn, shift, slots)
            residual = ((y - target) * mask[:, :, None]).reshape(b, 3 * n)
            jtj = jacobian.transpose(1, 2) @ jacobian
            scale = jtj.diagonal(dim1=1, dim2=2).mean(1)
            delta = torch.linalg.solve(jtj + (damping * scale)[:, None, None] * eye,
                                       -(jacobian.transpose(1, 2) @ residual[:, :, None])[:, :, 0])
            delta = torch.cat([delta.new_zeros(b, hold), delta], 1)
            with torch.no_grad():
                tried, _, _ = self.decoder.slots(z + delta, n_atoms, n, slot_types)
            better = (((tried - target) * mask[:, :, None]) ** 2).sum((1, 2)) < (residual**2).sum(1)
            z = torch.where(better[:, None], z + delta, z)
            damping = torch.where(better, damping / FIT_LM_DOWN, damping * FIT_LM_UP)
            moved = better
        return z, target, turn, shift, slots

    def _drawing_and_jacobian(self, z: torch.Tensor, slot_types: torch.Tensor, n_atoms: torch.Tensor,
                              hold: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """What the decoder draws of z, (B, N, 3), and the Jacobian of its coordinates, flattened, in
        z[:, hold:], (B, 3N, D - hold): one backward pass, batched over the 3N rows (`is_grads_batched`)."""
        b, n = slot_types.shape
        free = z[:, hold:].detach().clone().requires_grad_(True)
        y, _, _ = self.decoder.slots(torch.cat([z[:, :hold].detach(), free], 1), n_atoms, n, slot_types)
        rows = torch.eye(3 * n, dtype=z.dtype, device=z.device).reshape(3 * n, 1, n, 3).expand(3 * n, b, n, 3)
        (grads,) = torch.autograd.grad(y, free, rows, is_grads_batched=True)
        return y.detach(), grads.transpose(0, 1)

    def decode(self, z: torch.Tensor, n_atoms: torch.Tensor,
               slot_types: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Canonical coordinates (B, N, 3) and element logits (B, N, K).

        `slot_types` (B, N), the element index of each canonical slot (the composition, sorted), is
        used by decoders built with `decoder_composition`.
        """
        return self.decoder(z, n_atoms, int(n_atoms.max()), slot_types)

    def forward(self, batch: dict[str, torch.Tensor], tau: float | None = None, straight_through: bool = False,
                tie_noise: float = 0.0) -> dict[str, torch.Tensor]:
        """Encode, decode and map back: adds Y, logits, P and reconstruction (A, 3) / logits (A, K).

        With `tau` the permutation is relaxed (P_soft, for training; with `straight_through` the
        forward pass uses the hard P and the gradient the soft one). Without it P is hard.
        """
        out = self.encode(batch, tie_noise=tie_noise)
        layout: Layout = out["layout"]
        slot_types = _slot_types(batch[TYPES], out["order"], layout)
        y, logits = self.decode(out["z"], layout.n_atoms, slot_types)
        p_hard = hard_permutation(out["order"], layout.mask, y.dtype)
        if tau is None:
            p = p_hard
        else:
            p_soft = soft_permutation(layout.to_dense(out["scores"]), layout.to_dense(batch[TYPES]), layout.mask, tau)
            out["p_soft"] = p_soft
            p = p_hard + p_soft - p_soft.detach() if straight_through else p_soft
        rotated = y @ out["rotation"].transpose(1, 2)  # Y R^T
        x_hat = torch.einsum("bki,bkc->bic", p, rotated) + out["translation"][:, None]
        out.update(y=y, type_logits=logits, p=p,
                   reconstruction=layout.to_flat(x_hat),
                   reconstruction_logits=layout.to_flat(torch.einsum("bki,bkc->bic", p, logits)))
        return out

    def canonical_form(self, batch: dict[str, torch.Tensor], encoded: dict | None = None) -> torch.Tensor:
        """C(X) = P (X - t) R, (B, N, 3): the same for every rotated, translated, renumbered copy."""
        out = encoded or self.encode(batch)
        return _ordered(out["canonical"], out["order"], out["layout"])


def _unmoved(b: int, n: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`_relay`'s corrections before any: turn (b, 3, 3) the identity, shift (b, 3) zero, slots (b, n)
    in order; in `like`'s dtype and on its device."""
    return (torch.eye(3, dtype=like.dtype, device=like.device).repeat(b, 1, 1), like.new_zeros(b, 3),
            torch.arange(n, device=like.device).repeat(b, 1))


def _relay(drawing: torch.Tensor, target: torch.Tensor, slot_types: torch.Tensor, n_atoms: torch.Tensor,
           turn: torch.Tensor, shift: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each structure `target` (B, N, 3) laid onto the decoder's `drawing` of it: the within-element
    order and proper rigid motion that bring it closest (alternating Hungarian and Kabsch from
    the current pose and order: `align.refine`), and the corrections so far composed with them.
    On a GPU the whole batch is laid on at once (`_laid_on_together`)."""
    lay_on = _laid_on_together if drawing.is_cuda else _laid_on_one_by_one
    mapping, rotation, move = lay_on(drawing.detach(), target.detach(), slot_types, n_atoms)
    mask = (torch.arange(target.shape[1], device=target.device)[None, :] < n_atoms[:, None])[:, :, None]
    target = ((target.gather(1, mapping[:, :, None].expand(-1, -1, 3)) - move[:, None]) @ rotation) * mask
    # C' = (C[slots] - shift) turn, then (C'[mapping] - move) rotation = (C[slots[mapping]] - shift - move turn^T) (turn rotation)
    shift = shift + torch.einsum("bj,bij->bi", move, turn)
    return target, turn @ rotation, shift, slots.gather(1, mapping)


def _laid_on_one_by_one(drawing: torch.Tensor, target: torch.Tensor, slot_types: torch.Tensor,
                        n_atoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`_relay`'s motions, structure by structure through `align.refine` in NumPy: (mapping (B, N),
    rotation (B, 3, 3), move (B, 3)) with target[mapping] ~ drawing rotation^T + move."""
    from groupae_cli.align import refine

    drawn, laid = drawing.cpu().double().numpy(), target.cpu().double().numpy()
    types, sizes = slot_types.cpu().numpy(), n_atoms.tolist()
    mapping = np.tile(np.arange(target.shape[1]), (len(sizes), 1))
    rotation, move = np.empty((len(sizes), 3, 3)), np.empty((len(sizes), 3))
    for k, n in enumerate(sizes):
        found = refine(drawn[k, :n], laid[k, :n], types[k, :n], types[k, :n], np.eye(3), np.zeros(3))
        mapping[k, :n], rotation[k], move[k] = found.mapping, found.rotation, found.translation
    mapping = torch.as_tensor(mapping, device=target.device)
    rotation, move = (torch.as_tensor(a, dtype=target.dtype, device=target.device) for a in (rotation, move))
    return mapping, rotation, move


def _laid_on_together(drawing: torch.Tensor, target: torch.Tensor, slot_types: torch.Tensor, n_atoms: torch.Tensor,
                      max_iter: int = 50) -> tuple[torch.Tensor, ...]:
    """`_laid_on_one_by_one` for the whole batch at once, on its device: the same alternation (assign
    within elements, then Kabsch, until no structure's assignment changes), with the Kabsch
    solutions batched on the device and only the assignments (`align.assign`, SciPy's Hungarian)
    made one by one on the CPU. Equal to it up to round-off; a GPU step is bound by the CPU otherwise."""
    from groupae_cli.align import assign

    b, n = target.shape[:2]
    device = target.device
    sizes, types = n_atoms.tolist(), slot_types.cpu().numpy()
    laid = target.cpu().double().numpy()
    mask = (torch.arange(n, device=device)[None, :] < n_atoms[:, None]).to(target.dtype)[:, :, None]
    count = n_atoms.to(target.dtype)[:, None]
    rotation = torch.eye(3, dtype=target.dtype, device=device).repeat(b, 1, 1)
    move = torch.zeros(b, 3, dtype=target.dtype, device=device)
    mapping = np.tile(np.arange(n), (b, 1))
    active = list(range(b))
    for step in range(max_iter):
        live = torch.as_tensor(active, device=device)
        moved = (drawing[live] @ rotation[live].transpose(1, 2) + move[live][:, None]).cpu().double().numpy()
        changed = []
        for j, k in enumerate(active):
            size = sizes[k]
            new = mapping[k].copy()
            new[:size] = assign(moved[j, :size], laid[k, :size], types[k, :size], types[k, :size])
            if step == 0 or not np.array_equal(new, mapping[k]):
                mapping[k] = new
                changed.append(k)
        if not changed:
            break
        # Kabsch of each changed structure's drawing onto its target in the new order (align.kabsch_many)
        sel = torch.as_tensor(changed, device=device)
        p, m = drawing[sel], mask[sel]
        q = target[sel].gather(1, torch.as_tensor(mapping[changed], device=device)[:, :, None].expand(-1, -1, 3))
        pc, qc = (p * m).sum(1) / count[sel], (q * m).sum(1) / count[sel]
        h = torch.einsum("bni,bnj->bij", (p - pc[:, None]) * m, q - qc[:, None])
        u, _, vt = torch.linalg.svd(h)
        v, ut = vt.transpose(1, 2), u.transpose(1, 2)
        d = torch.sign(torch.linalg.det(v @ ut))
        d = torch.where(d == 0, torch.ones_like(d), d)
        fix = torch.ones(len(changed), 3, dtype=target.dtype, device=device)
        fix[:, 2] = d
        turned = v @ (fix[:, :, None] * ut)
        rotation[sel] = turned
        move[sel] = qc - torch.einsum("bj,bkj->bk", pc, turned)
        active = changed
    return torch.as_tensor(mapping, device=device), rotation, move


def _ordered(canonical: torch.Tensor, order: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The structure in its canonical pose and order (B, N, 3), padding 0."""
    return canonical.gather(1, order[:, :, None].expand(-1, -1, 3)) * layout.mask[:, :, None]


def _slot_types(types: torch.Tensor, order: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Each canonical slot's element (B, N)."""
    return layout.to_dense(types).gather(1, order)
