"""The fused GIN kernel family (2D and 3D share every line through constexprs).

Layout. A sample is viewed as ``[C, S, P, W]``: 3D volumes as ``[C, D, H, W]``; 2D images as
``[C, H, 1, W]``. A program owns one tile of ``TH x TW`` lanes (``TH`` rows of ``TW`` columns) and streams it along
S, one plane a step, pushing it through the whole conv stack before it loads the next one:

- 3D: the lanes are a ``TH x TW`` tile of the (H, W) plane; all rows stream the same D chunk.
- 2D: the lanes are ``TH`` independent row bands of one ``TW``-wide column tile; band ``i``
  streams its own chunk of ``ZC`` rows (no conv across bands).

Every conv is written as a scatter: the plane arriving at stream coordinate ``c`` adds its
contributions to the ``k`` output planes ``c - r .. c + r`` it touches; ``k - 1`` pending partial
planes per output channel are carried in registers from step to step, and plane ``c - r`` leaves
complete (bias, leaky ReLU, zero padding) as the next layer's arriving plane. Neighbours within a
plane come from global memory (L1-hot) for the input layer and, for later layers, from
``tl.gather`` (on-chip; 2D) or a per-program scratch (``SCRATCH``: the 3D default since v1.8); the
tile's border lanes go stale by the radius of each later layer, so only the interior (``RH`` = the
sum of those radii from each side) is stored. Nothing but the output and a few partial sums leaves
the chip.

The Frobenius renormalization needs the whole sample: each program writes its partial sums of
``x^2`` and ``mixed^2``, reduced in a fixed order (deterministic); see :mod:`fedgin.kernels.launch` for the
modes. ``STORE_FINISH`` makes it one launch: a per-sample atomic counter elects the sample's last program,
which rescales the whole sample while it is still in L2.
"""
import triton
import triton.language as tl

# MODE: what the stream kernel does with the mixed output.
STORE_UNSCALED = tl.constexpr(0)  # store mixed, write partial norms (a scale pass follows)
NORMS_ONLY = tl.constexpr(1)  # write partial norms only (first pass of the recompute path)
STORE_SCALED = tl.constexpr(2)  # reduce this sample's partial norms first, store the renormalized output
STORE_FINISH = tl.constexpr(3)  # STORE_UNSCALED, then the sample's last program to finish renormalizes it


@triton.jit
def sample_base(b, c, C, N):
    """Element offset of channel ``c`` of sample ``b`` in a contiguous [B, C, N] tensor, in int64."""
    return (b.to(tl.int64) * C + c) * N


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _total(t):
    """Sum of a 2D tile (``tl.reduce`` with a local combine: ``tl.sum`` cannot run in the CPU interpreter copy)."""
    return tl.reduce(tl.reduce(t, 1, _add), 0, _add)


@triton.jit
def _sample_scale(part_ptr, b, n_tiles, eps, err_ptr, report, PBLOCK: tl.constexpr):
    """``||x_b|| / (||mixed_b|| + eps)`` from the sample's per-tile partial sums, in a fixed order. Where ``report``
    (one program a sample) and a sum is not finite (non-finite input, or a mix past float32's range), it adds 1 to the
    error counter at ``err_ptr``: the host reads it when it chooses, so no call waits for the device."""
    sx = tl.full((PBLOCK,), 0.0, tl.float32)
    sm = tl.full((PBLOCK,), 0.0, tl.float32)
    for s0 in range(0, n_tiles, PBLOCK):
        idx = s0 + tl.arange(0, PBLOCK)
        q = part_ptr + (b.to(tl.int64) * n_tiles + idx) * 2
        sx += tl.load(q, mask=idx < n_tiles, other=0.0, cache_modifier=".cg")  # L2: other CTAs wrote them
        sm += tl.load(q + 1, mask=idx < n_tiles, other=0.0, cache_modifier=".cg")
    tx = tl.reduce(sx, 0, _add)
    tm = tl.reduce(sm, 0, _add)
    finite = (tx < float("inf")) & (tm < float("inf"))  # NaN compares false
    if report & (finite == 0):
        tl.atomic_add(err_ptr, 1)
    return tl.sqrt(tx) / (tl.sqrt(tm) + eps)


@triton.jit
def _philox(counter, k0, k1):
    """The first two words of Philox4x32-10 at ``counter`` (uint32) with key ``(k0, k1)`` (``fedgin.draw.philox``)."""
    z = counter * 0
    a, b, _, _ = tl.philox_impl(counter, z, z, z, k0, k1)
    return a, b


@triton.jit
def _splitmix64(z):
    """SplitMix64's finalizer of the uint64 ``z`` (``fedgin.draw.splitmix64``)."""
    z = z + 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)


@triton.jit
def _draw_row(p_ptr, tab_ptr, k0, k1, net_base, PRM: tl.constexpr, POOL: tl.constexpr, L: tl.constexpr,
              DBLOCK: tl.constexpr):
    """Draw a sample's packed parameter row (``PRM`` floats) into ``p_ptr``: entry ``j`` of the draw table says which
    number of the sample's block (counter ``net_base`` + its index) fills it, whether it is a weight (normal) or
    padding (0), its layer and its ring (a tap's distance from the kernel's centre). With a pool of sizes (``POOL``),
    a tap outside its layer's drawn kernel is zero, so a launch whose kernels are larger than a draw's runs it exactly
    (``fedgin.draw`` and :func:`fedgin.kernels.launch.draw_table`)."""
    radii = ()
    if len(POOL) > 1:  # each layer's drawn size, from the seed's hash: 16 bits a layer, a new hash every 4 layers
        h = _splitmix64(k1.to(tl.uint64) * 2147483648 + k0.to(tl.uint64))
        for li in tl.static_range(L):
            if li > 0 and li % 4 == 0:
                h = _splitmix64(h)
            pick = (((h >> (16 * (li % 4))) & 0xFFFF) * len(POOL)) >> 16
            r_li = (pick * 0).to(tl.int32) + POOL[0] // 2
            for i in tl.static_range(1, len(POOL)):
                r_li = tl.where(pick == i, POOL[i] // 2, r_li)
            radii = radii + (r_li,)
    for j0 in range(0, PRM, DBLOCK):
        idx = j0 + tl.arange(0, DBLOCK)
        e = tl.load(tab_ptr + idx, mask=idx < PRM, other=0)
        a, b = _philox((net_base + (e & 0xFFFFF)).to(tl.uint32), k0, k1)
        val, _ = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(a), tl.uint_to_uniform_float(b))
        keep = (e >> 28) == 1
        if len(POOL) > 1:
            lay = (e >> 20) & 0xF
            rad = lay * 0
            for i in tl.static_range(L):
                rad = tl.where(lay == i, radii[i], rad)
            keep = keep & (((e >> 24) & 0xF) <= rad)
        tl.store(p_ptr + idx, tl.where(keep, val, 0.0), mask=idx < PRM)


@triton.jit
def _shift(t, dp: tl.constexpr, dw: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr):
    """``t[i + dp, j + dw]`` on the tile (clamped at the tile edge: those lanes are halo)."""
    if dw != 0:
        j = tl.broadcast_to(tl.arange(0, TW)[None, :], (TH, TW))
        t = tl.gather(t, tl.minimum(tl.maximum(j + dw, 0), TW - 1), 1)
    if dp != 0:
        i = tl.broadcast_to(tl.arange(0, TH)[:, None], (TH, TW))
        t = tl.gather(t, tl.minimum(tl.maximum(i + dp, 0), TH - 1), 0)
    return t


@triton.jit
def _part(t, start: tl.constexpr, n: tl.constexpr, TAKE: tl.constexpr):
    """``t[start:start + n]`` if ``TAKE``, else ``()`` (Triton 3.6 cannot slice a tuple with constexpr bounds)."""
    part = ()
    if TAKE:
        for i in tl.static_range(start, start + n):
            part = part + (t[i],)
    return part


@triton.jit
def _scatter(acc, v, g_ptr, wg, COUT: tl.constexpr, K: tl.constexpr, WVEC: tl.constexpr, WARGS: tl.constexpr):
    """Add the arriving plane's shifted input plane ``v`` to the ``COUT x K`` accumulators: ``w[co, m] * v`` to
    ``acc[co * K + m]``. ``g_ptr``: the weight group (``w[co, m]`` at ``g_ptr + co * K + m``; COUT x K padded to a
    multiple of 4, 16-byte aligned). ``WVEC`` 4: 128-bit loads of four weights, one load instruction instead of four
    (bench/NOTES.md, v1.6). ``WARGS``: the weights are kernel arguments instead, the group's ``wg[co * K + m]`` (no
    load: bench/NOTES.md, v1.9)."""
    G: tl.constexpr = COUT * K
    ws = ()
    if WARGS:
        for i in tl.static_range(G):
            ws = ws + (wg[i],)
    elif WVEC == 4:
        for q in tl.static_range((G + 3) // 4):
            a, b = tl.split(tl.reshape(tl.load(g_ptr + 4 * q + tl.arange(0, 4)), (2, 2)))
            a0, a1 = tl.split(a)
            b0, b1 = tl.split(b)
            ws = ws + (a0, b0, a1, b1)
    else:
        for i in tl.static_range(G):
            ws = ws + (tl.load(g_ptr + i),)
    new = ()
    for i in tl.static_range(G):
        new = new + (acc[i] + ws[i] * v,)
    return new


@triton.jit
def _arrive(acc, cur, x_ptr, xoff, prow, cols, P, zok, N, w_ptr, W, s_ptr, tile_off, wl, CIN: tl.constexpr,
            COUT: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, FIRST: tl.constexpr, TH: tl.constexpr,
            TW: tl.constexpr, WVEC: tl.constexpr, USE_SCRATCH: tl.constexpr, WARGS: tl.constexpr):
    """The arriving plane's multiply-adds into the accumulators ``acc`` (see :func:`_layer`): each input channel's
    shifted planes (loaded for the first layer, from the scratch or ``tl.gather`` for the others) scattered with their
    weight groups."""
    R: tl.constexpr = K // 2
    RP: tl.constexpr = KP // 2
    GP: tl.constexpr = (COUT * K + 3) // 4 * 4  # a weight group: COUT x K padded to 16 bytes
    if USE_SCRATCH:
        tl.debug_barrier()  # every lane has read the scratch's last plane
        for ci in tl.static_range(CIN):
            tl.store(s_ptr + ci * TH * TW + tile_off, cur[ci])
        tl.debug_barrier()  # and the new one is all there
    for ci in tl.static_range(CIN):
        for dwi in tl.static_range(K):
            if not FIRST and not USE_SCRATCH:
                vw = _shift(cur[ci], 0, dwi - R, TH, TW)
            for dpi in tl.static_range(KP):
                if FIRST:
                    dp = dpi - RP
                    dw = dwi - R
                    ok = zok & (prow + dp >= 0) & (prow + dp < P) & (cols + dw >= 0) & (cols + dw < W)
                    v = tl.load(x_ptr + N * ci + (xoff + (dp * W + dw)), mask=ok, other=0.0).to(tl.float32)
                elif USE_SCRATCH:
                    if dpi == RP and dwi == R:
                        v = cur[ci]
                    else:
                        v = tl.load(s_ptr + ci * TH * TW + tile_off + ((dpi - RP) * TW + (dwi - R)))
                else:
                    v = _shift(vw, dpi - RP, 0, TH, TW)
                acc = _scatter(acc, v, w_ptr + ((ci * KP + dpi) * K + dwi) * GP,
                               _part(wl, ((ci * KP + dpi) * K + dwi) * GP, COUT * K, WARGS), COUT, K, WVEC, WARGS)
    return acc


@triton.jit
def _layer(cur, pend, x_ptr, xoff, prow, cols, P, zok, N, w_ptr, plane_ok, zd, S, slope, s_ptr, tile_off, wl,
           CIN: tl.constexpr, COUT: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, FIRST: tl.constexpr,
           LAST: tl.constexpr, W, TH: tl.constexpr, TW: tl.constexpr, WVEC: tl.constexpr, SCRATCH: tl.constexpr,
           WARGS: tl.constexpr):
    """One layer's step: scatter the arriving plane, return (the completed plane, the new pending planes).

    ``cur``: the arriving plane (``CIN`` tensors), unused for the first layer, which loads the input at offsets
    ``xoff`` (mask ``zok``) instead. The completed plane is ``zd``.
    Weights at ``w_ptr``: one group (:func:`_scatter`) per (input channel, tap along P, tap along W), then the COUT
    biases (see :func:`fedgin.kernels.launch.pack_params`); with ``WARGS`` the same floats from the layer's slice
    ``wl`` of the kernel arguments instead (slices: Triton's front end copies a tuple argument's type at each call,
    so the whole tuple into every call took most of a compile, 36 of 44 s in 3D). ``SCRATCH``: later layers take
    their in-plane neighbours from the program's scratch at ``s_ptr`` (the planes stored at the lanes' ``tile_off``,
    then read back shifted: two barriers a layer) instead of ``tl.gather``; a lane at the tile's edge reads a
    neighbouring row's or program's value, which, like the clamped gather's, only reaches halo lanes.
    """
    GP: tl.constexpr = (COUT * K + 3) // 4 * 4  # a weight group: COUT x K padded to 16 bytes
    acc = ()
    for co in tl.static_range(COUT):  # K accumulators an output channel: K - 1 pending, one new
        for m in tl.static_range(K):
            if m < K - 1:
                acc = acc + (pend[co * (K - 1) + m],)
            else:
                acc = acc + (tl.full((TH, TW), 0.0, tl.float32),)
    USE_SCRATCH: tl.constexpr = SCRATCH and not FIRST
    acc = _arrive(acc, cur, x_ptr, xoff, prow, cols, P, zok, N, w_ptr, W, s_ptr, tile_off, wl, CIN, COUT, K, KP,
                  FIRST, TH, TW, WVEC, USE_SCRATCH, WARGS)
    BIAS: tl.constexpr = CIN * KP * K * GP
    done = ()
    done_ok = (zd >= 0) & (zd < S)
    for co in tl.static_range(COUT):
        if WARGS:
            h = acc[co * K] + wl[BIAS + co]
        else:
            h = acc[co * K] + tl.load(w_ptr + BIAS + co)
        if not LAST:
            h = tl.where(h >= 0, h, h * slope)
            h = tl.where(plane_ok & done_ok, h, 0.0)  # zero padding for the next layer
        done = done + (h,)
    new_pend = ()
    for co in tl.static_range(COUT):
        for m in tl.static_range(1, K):
            new_pend = new_pend + (acc[co * K + m],)
    return done, new_pend


# b0 and v0 any sample and view, the seed's halves any value: one compiled kernel serves them all
@triton.jit(do_not_specialize=["view_step", "nb", "b0", "v0", "seed_lo", "seed_hi", "block", "shared"])
def gin_stream_kernel(
    x_ptr, out_ptr, prm_ptr, part_ptr, cnt_ptr, scr_ptr, seed_ptr, tab_ptr, err_ptr,
    S, P, W, zc, n_steps, n_wt, n_pt, n_tiles, prm_stride, view_step, nb, b0, v0, slope, eps, wargs,
    seed_lo, seed_hi, block, shared,
    CH: tl.constexpr, OFF: tl.constexpr, KS: tl.constexpr, KPS: tl.constexpr, BANDS: tl.constexpr,
    RS: tl.constexpr, RH: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, MODE: tl.constexpr, PBLOCK: tl.constexpr,
    FBLOCK: tl.constexpr, WVEC: tl.constexpr, SCRATCH: tl.constexpr, GUARD: tl.constexpr, WARGS: tl.constexpr,
    DRAW: tl.constexpr, POOL: tl.constexpr,
):
    """GIN over one tile of one sample; grid ``(n_tiles, B, V)``, or ``(n_tiles, 1, 1)`` with ``WARGS``. See the
    module docstring.

    V draws for a batch of ``nb`` in one launch: program ``(tile, b - b0, v - v0)`` applies parameter row
    ``v * nb + b`` (partial norms row ``v * nb + b``) to input sample ``b`` and writes output sample
    ``v * view_step * nb + b``, so draw ``v`` fills every ``view_step``-th view of ``out`` [views, nb, C, *S]. One
    draw: V = 1, all rows ``b``. ``WARGS``: the weights and biases of the launch's rows (one sample's, or one network
    a batch shares) are the tuple ``wargs``, a row's floats up to its alpha (kernel arguments: uniform registers
    loaded from the constant bank, no load-store instruction; bench/NOTES.md, v1.9), and ``prm_ptr`` holds each
    row's alpha; else ``wargs`` is empty and the rows are read at ``prm_ptr``.

    ``CH``: channels at each layer boundary (C, M, ..., M, C); ``OFF``: offset of each layer's packed
    weights and biases in a sample's parameter row, and their end. ``KS``: kernel size per layer (along S and W);
    ``KPS``: along P (``KS`` in 3D, all 1 in 2D).
    ``RS``: sum of the radii (the halo along S); ``RH``: the in-plane halo (``RS`` less the first
    layer's radius: that layer reads true neighbours from memory). ``BANDS``: 2D band layout. Parameters per sample
    (``prm_stride`` floats, a multiple of 16): per layer its weight groups and biases
    (:func:`fedgin.kernels.launch.pack_params`), alpha last. ``cnt_ptr``: int32 per row, zero at launch, and
    ``FBLOCK``: elements a step of the finishing program's rescale (``STORE_FINISH`` only). ``WVEC``: weights
    loaded 4 at a time (4) or one by one (1). ``SCRATCH`` (3D): in-plane shifts of the later layers through
    ``scr_ptr``, ``M x TH x TW`` floats a program after ``GUARD`` floats (see :func:`_layer`;
    :func:`fedgin.kernels.launch.scratch_guard`). ``n_steps``: a step a plane of the chunk (``zc``) and of its halo
    on either side (``RS``).

    ``DRAW``: the program draws its parameters from the seed (``fedgin.draw``) before it streams: the key is the
    int64 at ``seed_ptr`` (0 in eager calls; a device-drawn seed in captured or compiled ones) plus the halves
    ``seed_lo``/``seed_hi``, view ``v`` adding ``v`` to the high half; sample ``b``'s numbers start at counter
    ``16 + b * block`` (sample 0's with ``shared``). Each program writes its sample's row to ``prm_ptr`` through the
    draw table at ``tab_ptr`` (the programs of a sample write the same bits), then streams as if it had been packed
    on the host; the alpha comes straight from the draw. ``err_ptr``: the error counter (:func:`_sample_scale`).
    """
    L: tl.constexpr = len(KS)
    C: tl.constexpr = CH[0]
    RP: tl.constexpr = 0 if BANDS else RH
    tile = tl.program_id(0)
    b = tl.program_id(1) + b0
    v = tl.program_id(2) + v0
    row = v * nb + b  # parameter and partial-norm row
    N = S * P * W
    N64 = N.to(tl.int64)
    PW = P * W
    wt = tile % n_wt
    pt = (tile // n_wt) % n_pt
    zt = tile // (n_wt * n_pt)

    rows = tl.arange(0, TH)[:, None]
    cols = (wt * (TW - 2 * RH) - RH + tl.arange(0, TW))[None, :]
    if BANDS:
        zlo = zt * (TH * zc) + rows * zc  # [TH, 1]: each row band streams its own chunk
        prow = rows * 0
    else:
        zlo = zt * zc + rows * 0
        prow = pt * (TH - 2 * RP) - RP + rows
    zhi = tl.minimum(zlo + zc, S)
    col_ok = (cols >= 0) & (cols < W)
    row_ok = (prow >= 0) & (prow < P)
    plane_ok = row_ok & col_ok
    own = col_ok & (cols >= wt * (TW - 2 * RH)) & (cols < (wt + 1) * (TW - 2 * RH))
    if BANDS:
        own = own & row_ok
    else:
        own = own & row_ok & (rows >= RP) & (rows < TH - RP)
    xoff0 = prow * W + cols  # in-plane offset of each lane

    x_b = x_ptr + sample_base(b, 0, C, N)
    o_b = out_ptr + sample_base(v * view_step * nb + b, 0, C, N)
    p_b = prm_ptr + row.to(tl.int64) * prm_stride
    REGION: tl.constexpr = CH[1] * TH * TW  # one plane of a later layer's input channels
    s_b = scr_ptr + GUARD + (row.to(tl.int64) * n_tiles + tile) * REGION
    tile_off = rows * TW + tl.arange(0, TW)[None, :]
    if DRAW:
        sd = tl.load(seed_ptr)
        k0 = ((sd & 0x7FFFFFFF) + seed_lo).to(tl.uint32)
        k1 = ((sd >> 31) + seed_hi + v).to(tl.uint32)
        a, _ = _philox((16 + b * block + block - 1).to(tl.uint32), k0, k1)
        alpha = tl.uint_to_uniform_float(a)
        PRM: tl.constexpr = (OFF[L] + 16) // 16 * 16
        _draw_row(p_b, tab_ptr, k0, k1, 16 + b * (1 - shared) * block, PRM, POOL, L, 128)
        tl.store(p_b + PRM - 1, alpha)  # for a second pass (float16) that reads the row
        tl.debug_barrier()  # the row is all there before any lane reads it
    elif WARGS:  # prm_ptr: the rows' alphas
        alpha = tl.load(prm_ptr + row)
    else:
        alpha = tl.load(p_b + prm_stride - 1)

    scale = 1.0
    if MODE == STORE_SCALED:
        scale = _sample_scale(part_ptr, row, n_tiles, eps, err_ptr, tile == 0, PBLOCK)

    # pending partial planes of every layer: COUT * (K - 1) tiles each
    pend = ()
    for l in tl.static_range(L):
        layer_pend = ()
        for _ in tl.static_range(CH[l + 1] * (KS[l] - 1)):
            layer_pend = layer_pend + (tl.full((TH, TW), 0.0, tl.float32),)
        pend = pend + (layer_pend,)
    acc_x = tl.full((TH, TW), 0.0, tl.float32)
    acc_m = tl.full((TH, TW), 0.0, tl.float32)

    for t in range(n_steps):
        z = zlo - RS + t  # coordinate of the arriving input plane, [TH, 1]
        zok = (z >= 0) & (z < S)
        xoff = z * PW + xoff0
        cur = ()
        new_pend = ()
        zd = z
        for l in tl.static_range(L):
            zd = zd - KS[l] // 2  # coordinate of the plane this layer completes
            w_ptr = p_b + OFF[l]
            wl = _part(wargs, OFF[l], OFF[l + 1] - OFF[l], WARGS)  # the layer's weights and biases as arguments
            cur, lp = _layer(cur, pend[l], x_b, xoff, prow, cols, P, zok, N64, w_ptr, plane_ok, zd, S, slope, s_b,
                             tile_off, wl, CH[l], CH[l + 1], KS[l], KPS[l], l == 0, l == L - 1, W, TH, TW, WVEC,
                             SCRATCH, WARGS)
            new_pend = new_pend + (lp,)
        pend = new_pend
        # zd == z - RS: the output plane that just completed
        keep = own & (zd >= zlo) & (zd < zhi)
        ooff = zd * PW + xoff0
        for c in tl.static_range(C):
            xv = tl.load(x_b + N64 * c + ooff, mask=keep, other=0.0).to(tl.float32)
            mixed = alpha * cur[c] + (1.0 - alpha) * xv
            mixed = tl.where(keep, mixed, 0.0)
            if MODE != STORE_SCALED:
                acc_x += xv * xv
                acc_m += mixed * mixed
            if MODE == STORE_UNSCALED or MODE == STORE_FINISH:
                tl.store(o_b + N64 * c + ooff, mixed.to(out_ptr.dtype.element_ty), mask=keep)
            if MODE == STORE_SCALED:
                tl.store(o_b + N64 * c + ooff, (mixed * scale).to(out_ptr.dtype.element_ty), mask=keep)
        if MODE == NORMS_ONLY:
            # no store in this loop, so the compiler would hoist every weight load out of it (550 in 3D) and spill
            # (bench/NOTES.md); the barrier keeps them in the loop, as the stores do in the other modes
            tl.debug_barrier()

    if MODE != STORE_SCALED:
        q = part_ptr + (row.to(tl.int64) * n_tiles + tile) * 2
        tl.store(q, _total(acc_x))
        tl.store(q + 1, _total(acc_m))
    if MODE == STORE_FINISH:
        # every thread's stores precede the barrier, the release publishes them; the acquire of the last
        # program to arrive makes all of the sample's stores visible to it (the CUTLASS semaphore pattern)
        tl.debug_barrier()
        if tl.atomic_add(cnt_ptr + row, 1, sem="acq_rel", scope="gpu") == n_tiles - 1:
            _finish(o_b, part_ptr, row, n_tiles, C * N64, eps, err_ptr, PBLOCK, FBLOCK)


@triton.jit
def _finish(o_ptr, part_ptr, row, n_tiles, numel, eps, err_ptr, PBLOCK: tl.constexpr, FBLOCK: tl.constexpr):
    """Renormalize the ``numel`` stored mixed values at ``o_ptr`` (one sample) with partial-norm row ``row``."""
    scale = _sample_scale(part_ptr, row, n_tiles, eps, err_ptr, True, PBLOCK)
    for i0 in range(0, numel, FBLOCK):
        offs = i0 + tl.arange(0, FBLOCK)
        v = tl.load(o_ptr + offs, mask=offs < numel, other=0.0, cache_modifier=".cg").to(tl.float32)
        tl.store(o_ptr + offs, (v * scale).to(o_ptr.dtype.element_ty), mask=offs < numel)


@triton.jit
def gin_scale_kernel(out_ptr, part_ptr, err_ptr, n_tiles, numel, eps, BLOCK: tl.constexpr, PBLOCK: tl.constexpr):
    """Renormalize stored mixed values in place: ``out[b] *= ||x_b|| / (||mixed_b|| + eps)``; grid (blocks, B), the
    rows ``B`` of every view of the call.

    In reverse order of the stream's writes (last sample, last block first): the first CTAs find their data in L2.
    """
    b = tl.num_programs(1) - 1 - tl.program_id(1)
    scale = _sample_scale(part_ptr, b, n_tiles, eps, err_ptr, tl.program_id(0) == 0, PBLOCK)
    offs = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    ptr = out_ptr + sample_base(b, 0, 1, numel) + offs
    v = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    tl.store(ptr, (v * scale).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gin_ipa_kernel(out_ptr, mask_ptr, part1_ptr, part2_ptr, part3_ptr, err_ptr, n_tiles1, n_tiles2, n_tiles3, B, C,
                   n_sp, eps, SCALED: tl.constexpr, BLOCK: tl.constexpr, PBLOCK: tl.constexpr):
    """GIN-IPA's views in place in ``out`` [3, B, C, n_sp] holding GIN1..3 of the batch; grid (blocks, B).

    ``view1 = m * GIN1 + (1 - m) * GIN2``, ``view2 = (1 - m) * GIN1 + m * GIN2`` with the sample's mask ``m``
    ([B, n_sp], float32, shared by the channels); ``view3 = GIN3``. Unless ``SCALED`` (the stream stored them
    renormalized), each GIN is first renormalized with its partial norms (``part<v>_ptr``: [B, n_tiles<v>, 2]).
    Last sample first, as in :func:`gin_scale_kernel`.
    """
    b = B - 1 - tl.program_id(1)
    offs = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n_sp
    s1 = 1.0
    s2 = 1.0
    s3 = 1.0
    if not SCALED:
        first = tl.program_id(0) == 0
        s1 = _sample_scale(part1_ptr, b, n_tiles1, eps, err_ptr, first, PBLOCK)
        s2 = _sample_scale(part2_ptr, b, n_tiles2, eps, err_ptr, first, PBLOCK)
        s3 = _sample_scale(part3_ptr, b, n_tiles3, eps, err_ptr, first, PBLOCK)
    m = tl.load(mask_ptr + sample_base(b, 0, 1, n_sp) + offs, mask=inside, other=0.0)
    for c in range(C):
        p1 = out_ptr + sample_base(b, c, C, n_sp) + offs
        p2 = out_ptr + sample_base(b + B, c, C, n_sp) + offs
        g1 = tl.load(p1, mask=inside, other=0.0).to(tl.float32) * s1
        g2 = tl.load(p2, mask=inside, other=0.0).to(tl.float32) * s2
        tl.store(p1, (m * g1 + (1.0 - m) * g2).to(out_ptr.dtype.element_ty), mask=inside)
        tl.store(p2, ((1.0 - m) * g1 + m * g2).to(out_ptr.dtype.element_ty), mask=inside)
        if not SCALED:
            p3 = out_ptr + sample_base(b + 2 * B, c, C, n_sp) + offs
            g3 = tl.load(p3, mask=inside, other=0.0).to(tl.float32)
            tl.store(p3, (g3 * s3).to(out_ptr.dtype.element_ty), mask=inside)
