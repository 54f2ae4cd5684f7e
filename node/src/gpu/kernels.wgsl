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
        tile_a[ak * 16u + t / 16u] =
            vec4<f32>(load_a(ar, k0 + ak), load_a(ar + 1u, k0 + ak), load_a(ar + 2u, k0 + ak), load_a(ar + 3u, k0 + ak));
        tile_b[bk * 16u + t % 16u] =
            vec4<f32>(load_b(k0 + bk, bc), load_b(k0 + bk, bc + 1u), load_b(k0 + bk, bc + 2u), load_b(k0 + bk, bc + 3u));
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
    store(r, c, acc0);
    store(r + 1u, c, acc1);
    store(r + 2u, c, acc2);
    store(r + 3u, c, acc3);
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
