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
// invocations computes 4 x 4 outputs, strided by 16 so that neighbouring
// invocations touch neighbouring addresses.
const TILE: u32 = 64u;
const DEPTH: u32 = 16u;
var<workgroup> tile_a: array<f32, 1024>; // DEPTH x TILE, k-major
var<workgroup> tile_b: array<f32, 1024>; // DEPTH x TILE, k-major

// out[m x n] = apply(op, a[m x k] * b[k x n] (+ bias[n])).
@compute @workgroup_size(16, 16)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let t = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    for (var k0 = 0u; k0 < p.k; k0 += DEPTH) {
        for (var i = 0u; i < 4u; i++) {
            let idx = t + i * 256u;
            // a: TILE rows x DEPTH columns, read along rows.
            let ar = idx / DEPTH;
            let ak = idx % DEPTH;
            var av = 0.0;
            if (row0 + ar < p.m && k0 + ak < p.k) {
                av = a[(row0 + ar) * p.k + k0 + ak];
            }
            tile_a[ak * TILE + ar] = av;
            // b: DEPTH rows x TILE columns.
            let bk = idx / TILE;
            let bc = idx % TILE;
            var bv = 0.0;
            if (k0 + bk < p.k && col0 + bc < p.n) {
                bv = b[(k0 + bk) * p.n + col0 + bc];
            }
            tile_b[bk * TILE + bc] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < DEPTH; kk++) {
            var ra: array<f32, 4>;
            var rb: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                ra[i] = tile_a[kk * TILE + lid.y + i * 16u];
                rb[i] = tile_b[kk * TILE + lid.x + i * 16u];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(ra[i], rb[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y + i * 16u;
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + lid.x + j * 16u;
            if (r < p.m && c < p.n) {
                var v = acc[i * 4u + j];
                if ((p.flags & 1u) != 0u) {
                    v = v + bias[c];
                }
                out[r * p.n + c] = apply(p.op, v);
            }
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
