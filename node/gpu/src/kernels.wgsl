// The wasmgrid GPU kernels. Every entry point shares one bind group layout:
// `a` and `b` are inputs, `bias` a row vector, `out` the result and `p` the
// shapes. Matrices are f32, row-major. The CPU fallback (cpu.rs) computes the
// same functions in the same order of operations.

struct Params {
    // Rows of `a` and `out`.
    m: u32,
    // Columns of `a` (matmul: rows of `b`).
    k: u32,
    // Columns of `out`.
    n: u32,
    // The function applied: see `apply` (unary, epilogue), `combine`
    // (binary) and `fold` (reduce).
    op: u32,
    // Shape of `b` for broadcasting binary operations.
    b_rows: u32,
    b_cols: u32,
    // Bit 0: `bias` holds a bias row to add (matmul epilogue).
    flags: u32,
    // Invocations per row of the dispatch grid (elementwise kernels).
    stride: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

// 0 identity, 1 relu, 2 sigmoid, 3 tanh, 4 exp, 5 log, 6 neg, 7 abs, 8 sqrt.
fn apply(op: u32, x: f32) -> f32 {
    switch op {
        case 1u: { return max(x, 0.0); }
        case 2u: { return 1.0 / (1.0 + exp(-x)); }
        case 3u: { return tanh(clamp(x, -15.0, 15.0)); }
        case 4u: { return exp(x); }
        case 5u: { return log(x); }
        case 6u: { return -x; }
        case 7u: { return abs(x); }
        case 8u: { return sqrt(x); }
        default: { return x; }
    }
}

// 0 add, 1 sub, 2 mul, 3 div, 4 max, 5 min.
fn combine(op: u32, x: f32, y: f32) -> f32 {
    switch op {
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        case 3u: { return x / y; }
        case 4u: { return max(x, y); }
        case 5u: { return min(x, y); }
        default: { return x + y; }
    }
}

// The output tile of one workgroup is TILE x TILE; each of its 16 x 16
// invocations computes a 4 x 4 block of it, held in four vec4 registers.
// Both input tiles are kept in workgroup memory as vec4s: four rows of `a`
// at one k, four columns of `b` at one k.
const TILE: u32 = 64u;
const DEPTH: u32 = 16u;
var<workgroup> tile_a: array<vec4<f32>, 256>; // [k][row / 4]
var<workgroup> tile_b: array<vec4<f32>, 256>; // [k][col / 4]

fn load_a(r: u32, c: u32) -> f32 {
    if (r < p.m && c < p.k) {
        return a[r * p.k + c];
    }
    return 0.0;
}

fn load_b(r: u32, c: u32) -> f32 {
    if (r < p.k && c < p.n) {
        return b[r * p.n + c];
    }
    return 0.0;
}

// Rows r .. r + 4 of `a` at column c.
fn load_a4(r: u32, c: u32) -> vec4<f32> {
    return vec4<f32>(load_a(r, c), load_a(r + 1u, c), load_a(r + 2u, c), load_a(r + 3u, c));
}

// Columns c .. c + 4 of `b` at row r.
fn load_b4(r: u32, c: u32) -> vec4<f32> {
    return vec4<f32>(load_b(r, c), load_b(r, c + 1u), load_b(r, c + 2u), load_b(r, c + 3u));
}

// out[m x n] = apply(op, a[m x k] * b[k x n] (+ bias[n])).
@compute @workgroup_size(16, 16)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let t = lid.y * 16u + lid.x;
    // What this invocation loads: rows 4 * (t / 16) .. + 4 of `a` at k
    // t % 16, and columns 4 * (t % 16) .. + 4 of `b` at k t / 16.
    let ar = row0 + (t / 16u) * 4u;
    let ak = t % 16u;
    let bk = t / 16u;
    let bc = col0 + (t % 16u) * 4u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += DEPTH) {
        tile_a[ak * 16u + t / 16u] = load_a4(ar, k0 + ak);
        tile_b[bk * 16u + t % 16u] = load_b4(k0 + bk, bc);
        workgroupBarrier();
        for (var kk = 0u; kk < DEPTH; kk++) {
            let va = tile_a[kk * 16u + lid.y];
            let vb = tile_b[kk * 16u + lid.x];
            acc0 = fma(vec4<f32>(va.x), vb, acc0);
            acc1 = fma(vec4<f32>(va.y), vb, acc1);
            acc2 = fma(vec4<f32>(va.z), vb, acc2);
            acc3 = fma(vec4<f32>(va.w), vb, acc3);
        }
        workgroupBarrier();
    }
    let r = row0 + lid.y * 4u;
    let c = col0 + lid.x * 4u;
    store4(r, c, acc0, acc1, acc2, acc3);
}

// The wide variant, for outputs large enough to fill a GPU with 128 x 128
// tiles (larger tiles load each input value fewer times). The output tile of
// one workgroup is WIDE x WIDE; each of its 16 x 16 invocations computes an
// 8 x 8 block of it, held in sixteen vec4 registers: rows 4 * y .. + 4 and
// 64 + 4 * y .. + 4, columns 4 * x .. + 4 and 64 + 4 * x .. + 4 (in two
// halves, so the invocations of a subgroup read neighbouring vec4s of
// workgroup memory). Per step of WIDE_DEPTH values of k, both input tiles
// are kept in workgroup memory as in `matmul`. Each k costs four vec4 reads
// of workgroup memory for 64 multiply-adds (two for 16 in `matmul`). The sum
// for each output runs over k in order, as in `matmul`.
const WIDE: u32 = 128u;
const WIDE_DEPTH: u32 = 16u;
var<workgroup> wide_a: array<vec4<f32>, 512>; // [k][row / 4]
var<workgroup> wide_b: array<vec4<f32>, 512>; // [k][col / 4]

// out[m x n] = apply(op, a[m x k] * b[k x n] (+ bias[n])).
@compute @workgroup_size(16, 16)
fn matmul_wide(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * WIDE;
    let col0 = wid.x * WIDE;
    let t = lid.y * 16u + lid.x;
    var c00 = vec4<f32>(0.0);
    var c01 = vec4<f32>(0.0);
    var c02 = vec4<f32>(0.0);
    var c03 = vec4<f32>(0.0);
    var c04 = vec4<f32>(0.0);
    var c05 = vec4<f32>(0.0);
    var c06 = vec4<f32>(0.0);
    var c07 = vec4<f32>(0.0);
    var c10 = vec4<f32>(0.0);
    var c11 = vec4<f32>(0.0);
    var c12 = vec4<f32>(0.0);
    var c13 = vec4<f32>(0.0);
    var c14 = vec4<f32>(0.0);
    var c15 = vec4<f32>(0.0);
    var c16 = vec4<f32>(0.0);
    var c17 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += WIDE_DEPTH) {
        // Each invocation loads WIDE_DEPTH / 8 vec4s of each tile: entry e
        // holds rows 4 * (e / WIDE_DEPTH) .. + 4 of `a` at k e % WIDE_DEPTH,
        // and columns 4 * (e % 32) .. + 4 of `b` at k e / 32.
        for (var e = t; e < WIDE_DEPTH * 32u; e += 256u) {
            let ar = row0 + (e / WIDE_DEPTH) * 4u;
            let ak = k0 + e % WIDE_DEPTH;
            wide_a[(e % WIDE_DEPTH) * 32u + e / WIDE_DEPTH] = load_a4(ar, ak);
            wide_b[e] = load_b4(k0 + e / 32u, col0 + (e % 32u) * 4u);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < WIDE_DEPTH; kk++) {
            let a0 = wide_a[kk * 32u + lid.y];
            let a1 = wide_a[kk * 32u + 16u + lid.y];
            let b0 = wide_b[kk * 32u + lid.x];
            let b1 = wide_b[kk * 32u + 16u + lid.x];
            c00 = fma(vec4<f32>(a0.x), b0, c00);
            c01 = fma(vec4<f32>(a0.y), b0, c01);
            c02 = fma(vec4<f32>(a0.z), b0, c02);
            c03 = fma(vec4<f32>(a0.w), b0, c03);
            c04 = fma(vec4<f32>(a1.x), b0, c04);
            c05 = fma(vec4<f32>(a1.y), b0, c05);
            c06 = fma(vec4<f32>(a1.z), b0, c06);
            c07 = fma(vec4<f32>(a1.w), b0, c07);
            c10 = fma(vec4<f32>(a0.x), b1, c10);
            c11 = fma(vec4<f32>(a0.y), b1, c11);
            c12 = fma(vec4<f32>(a0.z), b1, c12);
            c13 = fma(vec4<f32>(a0.w), b1, c13);
            c14 = fma(vec4<f32>(a1.x), b1, c14);
            c15 = fma(vec4<f32>(a1.y), b1, c15);
            c16 = fma(vec4<f32>(a1.z), b1, c16);
            c17 = fma(vec4<f32>(a1.w), b1, c17);
        }
        workgroupBarrier();
    }
    let r0 = row0 + lid.y * 4u;
    let r1 = r0 + 64u;
    let q0 = col0 + lid.x * 4u;
    let q1 = q0 + 64u;
    store4(r0, q0, c00, c01, c02, c03);
    store4(r1, q0, c04, c05, c06, c07);
    store4(r0, q1, c10, c11, c12, c13);
    store4(r1, q1, c14, c15, c16, c17);
}

// Writes a 4 x 4 block at rows r .. r + 4, columns c .. c + 4.
fn store4(r: u32, c: u32, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) {
    store(r, c, v0);
    store(r + 1u, c, v1);
    store(r + 2u, c, v2);
    store(r + 3u, c, v3);
}

// Writes one row of a 4 x 4 block, with the bias and epilogue.
fn store(r: u32, c: u32, v: vec4<f32>) {
    if (r >= p.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        if (c + j < p.n) {
            var x = v[j];
            if ((p.flags & 1u) != 0u) {
                x = x + bias[c + j];
            }
            out[r * p.n + c + j] = apply(p.op, x);
        }
    }
}

fn flat(g: vec3<u32>) -> u32 {
    return g.y * p.stride + g.x;
}

// out[i] = apply(op, a[i]) for the m x n elements.
@compute @workgroup_size(256)
fn unary(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = flat(g);
    if (i < p.m * p.n) {
        out[i] = apply(p.op, a[i]);
    }
}

// out[r, c] = combine(op, a[r, c], b[r % b_rows, c % b_cols]).
@compute @workgroup_size(256)
fn binary(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = flat(g);
    if (i < p.m * p.n) {
        let r = i / p.n;
        let c = i % p.n;
        out[i] = combine(p.op, a[i], b[(r % p.b_rows) * p.b_cols + c % p.b_cols]);
    }
}

// One invocation per row of a (m x k): out[r] = sum, mean, max or argmax
// (op 0, 1, 2, 3) of the row.
@compute @workgroup_size(64)
fn reduce(@builtin(global_invocation_id) g: vec3<u32>) {
    let r = flat(g);
    if (r >= p.m) {
        return;
    }
    let base = r * p.k;
    if (p.op <= 1u) {
        var s = 0.0;
        for (var c = 0u; c < p.k; c++) {
            s = s + a[base + c];
        }
        if (p.op == 1u) {
            s = s / f32(p.k);
        }
        out[r] = s;
        return;
    }
    var best = a[base];
    var at = 0u;
    for (var c = 1u; c < p.k; c++) {
        let v = a[base + c];
        if (v > best) {
            best = v;
            at = c;
        }
    }
    if (p.op == 2u) {
        out[r] = best;
    } else {
        out[r] = f32(at);
    }
}

// One invocation per row of a (m x n): out = softmax of the row.
@compute @workgroup_size(64)
fn softmax(@builtin(global_invocation_id) g: vec3<u32>) {
    let r = flat(g);
    if (r >= p.m) {
        return;
    }
    let base = r * p.n;
    var top = a[base];
    for (var c = 1u; c < p.n; c++) {
        top = max(top, a[base + c]);
    }
    var s = 0.0;
    for (var c = 0u; c < p.n; c++) {
        let e = exp(a[base + c] - top);
        out[base + c] = e;
        s = s + e;
    }
    for (var c = 0u; c < p.n; c++) {
        out[base + c] = out[base + c] / s;
    }
}
