//! Launchers for `kernels/ops.cu`: the Qwen2 forward's small ops on GPU tensors (f32, f16 or bf16), and the
//! dense linear through cuBLAS. Shapes are validated by the device-independent wrappers in `crate::ops`.

use std::sync::Arc;

use cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::{bf16, f16};

use super::buffer::{GpuBuffer, GpuElement};
use super::launch;
use super::{cuda_error, Gpu};
use crate::{DType, Error, Result, Tensor};

const MODULE: &str = "ops";
const THREADS: u32 = 256;

/// One thread per element. The block count is computed in 64 bits (a u32 element count would wrap past 4G
/// elements); 2^31 - 1 blocks of 256 cover any tensor a GPU can hold.
fn elementwise(n: usize) -> LaunchConfig {
    let blocks = (n as u64)
        .div_ceil(THREADS as u64)
        .clamp(1, i32::MAX as u64) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn rows(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Whether rows of `width` elements of `dtype` take the kernels' 16-byte path (every row then starts 16-byte
/// aligned: allocations are 256-byte aligned), as the `vec` argument of the row kernels.
fn vector_rows(dtype: DType, width: usize) -> i32 {
    (width * dtype.size()).is_multiple_of(16) as i32
}

/// Elements in one 16-byte vector of `dtype`.
fn vector_len(dtype: DType) -> usize {
    16 / dtype.size().max(1)
}

/// The element-wise kernels take 16-byte vectors: one thread per vector.
fn vector_elementwise(n: usize, dtype: DType) -> LaunchConfig {
    elementwise(n.div_ceil(vector_len(dtype)))
}

/// One block per row for the rotary kernels: a thread owns `per_head` = (d/2)/G pair groups' place in each
/// head (G = 16-byte vector width when `vec`, else 1), so the block is a multiple of `per_head` threads, at
/// most 256 unless one head needs more.
fn rope_config(t: usize, heads: usize, d: usize, vec: i32, dtype: DType) -> Result<LaunchConfig> {
    let group = if vec != 0 { vector_len(dtype) } else { 1 };
    let per_head = (d / 2 / group).max(1);
    if per_head > 1024 {
        return Err(Error::Unsupported(format!(
            "rotary embedding of head dim {d}: at most 2048 (scalar) per head"
        )));
    }
    let threads = per_head * (256 / per_head).clamp(1, heads.max(1));
    Ok(LaunchConfig {
        grid_dim: (t as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Whether the rotary kernels take 16-byte vectors for head dim `d`: d/2 must be a multiple of the width.
fn vector_heads(dtype: DType, d: usize) -> i32 {
    (d / 2).is_multiple_of(vector_len(dtype)) as i32
}

fn launch_err(kernel: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| cuda_error(&format!("launching {kernel}"), e)
}

fn gpu_of(t: &Tensor) -> Result<Arc<Gpu>> {
    Ok(Arc::clone(&t.gpu_buffer()?.gpu))
}

fn upload_i32(gpu: &Arc<Gpu>, host: &[i32]) -> Result<GpuBuffer> {
    GpuBuffer::from_slice(gpu, host)
}

/// `out[i] = table[ids[i]]`, `[t, c]`.
pub fn embedding(ids: &[u32], table: &Tensor) -> Result<Tensor> {
    let gpu = gpu_of(table)?;
    let width = table.dim(1);
    let ids_gpu = GpuBuffer::from_slice(&gpu, ids)?;
    let mut out = GpuBuffer::output(&gpu, table.dtype(), ids.len() * width)?;
    float_dispatch!(table.dtype(), "embedding", |T, sfx| {
        let name = format!("embedding_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let (tab, idv) = (table.gpu_buffer()?.slice::<T>()?, ids_gpu.slice::<u32>()?);
        let o = out.slice_mut::<T>()?;
        let (w, vec) = (width as i32, vector_rows(table.dtype(), width));
        let mut b = gpu.stream().launch_builder(&f);
        b.arg(tab).arg(idv).arg(o).arg(&w).arg(&vec);
        // SAFETY: table is [vocab, width], ids are range-checked by the caller, out is [ids, width]; with
        // vec, every row is 16-byte aligned.
        unsafe { launch(&mut b, rows(ids.len(), THREADS)) }.map_err(launch_err(&name))?;
        Ok(())
    })?;
    Tensor::from_gpu_buffer(out, &[ids.len(), width])
}

/// RMSNorm over the last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32, width: usize) -> Result<Tensor> {
    let gpu = gpu_of(x)?;
    let rows_n = x.elem_count() / width;
    let mut out = GpuBuffer::output(&gpu, x.dtype(), x.elem_count())?;
    float_dispatch!(x.dtype(), "rms_norm", |T, sfx| {
        let name = format!("rms_norm_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let (xs, ws) = (
            x.gpu_buffer()?.slice::<T>()?,
            weight.gpu_buffer()?.slice::<T>()?,
        );
        let o = out.slice_mut::<T>()?;
        let (w, vec) = (width as i32, vector_rows(x.dtype(), width));
        let mut b = gpu.stream().launch_builder(&f);
        b.arg(xs).arg(ws).arg(o).arg(&w).arg(&eps).arg(&vec);
        // SAFETY: x and out hold rows_n * width elements, weight holds width (checked by the caller); with
        // vec, every row is 16-byte aligned.
        unsafe { launch(&mut b, rows(rows_n, THREADS)) }.map_err(launch_err(&name))?;
        Ok(())
    })?;
    Tensor::from_gpu_buffer(out, x.shape())
}

/// `a += b`.
pub fn add_inplace(a: &mut Tensor, b: &Tensor) -> Result<()> {
    let gpu = gpu_of(a)?;
    let n = a.elem_count() as i64;
    let dtype = a.dtype();
    let bb = b.gpu_buffer()?;
    let ab = a.gpu_buffer_mut()?;
    float_dispatch!(dtype, "add_inplace", |T, sfx| {
        let name = format!("add_inplace_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(ab.slice_mut::<T>()?).arg(bb.slice::<T>()?).arg(&n);
        // SAFETY: a and b hold n elements (same shape, checked by the caller), both 256-byte aligned.
        unsafe { launch(&mut l, vector_elementwise(n as usize, dtype)) }
            .map_err(launch_err(&name))?;
        Ok(())
    })
}

/// `silu(gate) * up`.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let gpu = gpu_of(gate)?;
    let n = gate.elem_count() as i64;
    let mut out = GpuBuffer::output(&gpu, gate.dtype(), n as usize)?;
    float_dispatch!(gate.dtype(), "silu_mul", |T, sfx| {
        let name = format!("silu_mul_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let (g, u) = (
            gate.gpu_buffer()?.slice::<T>()?,
            up.gpu_buffer()?.slice::<T>()?,
        );
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(g).arg(u).arg(out.slice_mut::<T>()?).arg(&n);
        // SAFETY: gate, up and out hold n elements, all 256-byte aligned.
        unsafe { launch(&mut l, vector_elementwise(n as usize, gate.dtype())) }
            .map_err(launch_err(&name))?;
        Ok(())
    })?;
    Tensor::from_gpu_buffer(out, gate.shape())
}

/// `x` converted to the float `dtype` on its GPU (f32, f16, bf16; one rounding, as the host conversion).
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    let gpu = gpu_of(x)?;
    let n = x.elem_count() as i64;
    let mut out = GpuBuffer::output(&gpu, dtype, n as usize)?;
    let name = match (x.dtype(), dtype) {
        (DType::F16, DType::F32) => "cast_f16_to_f32",
        (DType::BF16, DType::F32) => "cast_bf16_to_f32",
        (DType::F32, DType::F16) => "cast_f32_to_f16",
        (DType::F32, DType::BF16) => "cast_f32_to_bf16",
        (DType::F16, DType::BF16) => "cast_f16_to_bf16",
        (DType::BF16, DType::F16) => "cast_bf16_to_f16",
        (from, to) => {
            return Err(Error::Unsupported(format!(
                "casting a GPU tensor from {from} to {to}"
            )))
        }
    };
    let f = gpu.function(MODULE, name)?;
    let src = x.gpu_buffer()?;
    let mut l = gpu.stream().launch_builder(&f);
    macro_rules! arg_src {
        ($T:ty) => {
            l.arg(src.slice::<$T>()?)
        };
    }
    match x.dtype() {
        DType::F16 => arg_src!(f16),
        DType::BF16 => arg_src!(bf16),
        _ => arg_src!(f32),
    };
    match dtype {
        DType::F16 => l.arg(out.slice_mut::<f16>()?),
        DType::BF16 => l.arg(out.slice_mut::<bf16>()?),
        _ => l.arg(out.slice_mut::<f32>()?),
    };
    l.arg(&n);
    // SAFETY: the kernel named for this (source, destination) pair reads n elements of the source type
    // and writes n of the destination type; both buffers hold n elements of those types.
    unsafe { launch(&mut l, elementwise(n as usize)) }.map_err(launch_err(name))?;
    Tensor::from_gpu_buffer(out, x.shape())
}

/// `parts` (GPU tensors of one float dtype and the same trailing dims) stacked along their first dim.
pub fn concat_rows(parts: &[&Tensor]) -> Result<Tensor> {
    let Some(first) = parts.first() else {
        return Err(Error::shape("concat_rows (cuda)", "nothing to join"));
    };
    let (dtype, tail) = (first.dtype(), &first.shape()[1..]);
    if parts.iter().any(|p| {
        p.dtype() != dtype || p.shape().len() != first.shape().len() || &p.shape()[1..] != tail
    }) {
        return Err(Error::shape(
            "concat_rows (cuda)",
            "tensors of different dtypes or trailing dims",
        ));
    }
    let gpu = gpu_of(first)?;
    let rows: usize = parts.iter().map(|p| p.dim(0)).sum();
    let mut shape = first.shape().to_vec();
    shape[0] = rows;
    let mut out = GpuBuffer::output(&gpu, dtype, rows * tail.iter().product::<usize>())?;
    let e = |e| cuda_error("joining tensors on the GPU", e);
    float_dispatch!(dtype, "concat_rows", |T, _sfx| {
        let dst = out.slice_mut::<T>()?;
        let mut at = 0;
        for p in parts {
            let src = p.gpu_buffer()?.slice::<T>()?;
            gpu.stream()
                .memcpy_dtod(src, &mut dst.slice_mut(at..at + src.len()))
                .map_err(e)?;
            at += src.len();
        }
        Ok(())
    })?;
    Tensor::from_gpu_buffer(out, &shape)
}

/// Rows `start..end` of a GPU tensor, copied on the device.
pub fn narrow_rows(t: &Tensor, start: usize, end: usize) -> Result<Tensor> {
    let rows = t.dim(0);
    if start > end || end > rows {
        return Err(Error::shape(
            "narrow_rows (cuda)",
            format!("rows {start}..{end} out of {rows}"),
        ));
    }
    let gpu = gpu_of(t)?;
    let row = t.elem_count() / rows.max(1);
    let mut shape = t.shape().to_vec();
    shape[0] = end - start;
    let mut out = GpuBuffer::output(&gpu, t.dtype(), (end - start) * row)?;
    let e = |e| cuda_error("copying rows on the GPU", e);
    float_dispatch!(t.dtype(), "narrow_rows", |T, _sfx| {
        let src = t.gpu_buffer()?.slice::<T>()?;
        gpu.stream()
            .memcpy_dtod(&src.slice(start * row..end * row), out.slice_mut::<T>()?)
            .map_err(e)?;
        Ok(())
    })?;
    Tensor::from_gpu_buffer(out, &shape)
}

/// `w` `[n, k]` (a GPU tensor of any float dtype) with row `r` multiplied by `scale[r]`, in `dtype`: the
/// product rounded to f32, then to `dtype` (what scaling in f32 on the host and then casting gives).
pub fn scale_rows(w: &Tensor, scale: &[f32], dtype: DType) -> Result<Tensor> {
    let (n, k) = (w.dim(0), w.elem_count() / w.dim(0).max(1));
    if scale.len() != n || w.shape().len() != 2 {
        return Err(Error::shape(
            "scale_rows (cuda)",
            format!("{} scales for a weight {:?}", scale.len(), w.shape()),
        ));
    }
    let gpu = gpu_of(w)?;
    let scale_gpu = GpuBuffer::from_slice(&gpu, scale)?;
    let mut out = GpuBuffer::output(&gpu, dtype, n * k)?;
    let sfx = |d: DType| match d {
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        DType::F32 => Ok("f32"),
        other => Err(Error::Unsupported(format!("scale_rows to or from {other}"))),
    };
    let name = format!("scale_rows_{}_to_{}", sfx(w.dtype())?, sfx(dtype)?);
    let f = gpu.function(MODULE, &name)?;
    let src = w.gpu_buffer()?;
    let mut l = gpu.stream().launch_builder(&f);
    match w.dtype() {
        DType::F16 => l.arg(src.slice::<f16>()?),
        DType::BF16 => l.arg(src.slice::<bf16>()?),
        _ => l.arg(src.slice::<f32>()?),
    };
    l.arg(scale_gpu.slice::<f32>()?);
    match dtype {
        DType::F16 => l.arg(out.slice_mut::<f16>()?),
        DType::BF16 => l.arg(out.slice_mut::<bf16>()?),
        _ => l.arg(out.slice_mut::<f32>()?),
    };
    let (total, ki) = ((n * k) as i64, k as i32);
    l.arg(&total).arg(&ki);
    // SAFETY: w holds n·k elements of its type, scale n floats, out n·k elements of dtype; the kernel
    // (named for that pair of types) touches exactly those (grid-stride loop).
    unsafe { launch(&mut l, elementwise((n * k).min(1 << 26))) }.map_err(launch_err(&name))?;
    Tensor::from_gpu_buffer(out, w.shape())
}

/// [`crate::ops::patch::patches_with_positions`] on the GPU: `x` `[n, c, hh, ww]` f32 (checked by the caller:
/// `hh`, `ww` multiples of `p`, `width` at least `c·p·p` + tokens per image) to `[n·t, width]` in `dtype`.
pub fn patches_with_positions(x: &Tensor, p: usize, width: usize, dtype: DType) -> Result<Tensor> {
    let &[n, c, hh, ww] = x.shape() else {
        return Err(Error::shape(
            "patches_with_positions (cuda)",
            "images must be [n, c, h, w]",
        ));
    };
    let t = 1 + (hh / p) * (ww / p);
    let gpu = gpu_of(x)?;
    let total = n * t * width;
    let mut out = GpuBuffer::output(&gpu, dtype, total)?;
    let int = |what: &str, v: usize| {
        i32::try_from(v)
            .map_err(|_| Error::Unsupported(format!("patches_with_positions: {what} {v}")))
    };
    let (ci, hi, wi, pi, widthi) = (
        int("channels", c)?,
        int("height", hh)?,
        int("width", ww)?,
        int("patch", p)?,
        int("row width", width)?,
    );
    let totali = total as i64;
    float_dispatch!(dtype, "patches_with_positions", |T, sfx| {
        let name = format!("patches_with_positions_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(x.gpu_buffer()?.slice::<f32>()?)
            .arg(out.slice_mut::<T>()?)
            .arg(&ci)
            .arg(&hi)
            .arg(&wi)
            .arg(&pi)
            .arg(&widthi)
            .arg(&totali);
        // SAFETY: x holds n·c·hh·ww f32 values and out n·t·width of T; the kernel reads x only at pixels of
        // whole patches (hh, ww multiples of p, checked by the caller) and writes each of out's elements
        // once (grid-stride loop over `total`).
        unsafe { launch(&mut l, elementwise(total.min(1 << 26))) }.map_err(launch_err(&name))?;
        Ok(())
    })?;
    Tensor::from_gpu_buffer(out, &[n * t, width])
}

/// `len` elements of `dtype` made on the GPU by `fill` with `seed`: the bits [`crate::synthetic::fill_bytes`]
/// makes on the host.
pub fn synthetic(
    gpu: &Arc<Gpu>,
    dtype: DType,
    len: usize,
    fill: crate::synthetic::Fill,
    seed: u64,
) -> Result<GpuBuffer> {
    fill.check(dtype)?;
    let mut out = GpuBuffer::output(gpu, dtype, len)?;
    let (kind, a) = fill.kernel_code();
    let n = len as i64;
    // Grid-stride: a bounded grid covers tensors of any length.
    let config = elementwise(len.min(1 << 26));
    if dtype.is_float() {
        float_dispatch!(dtype, "synthetic", |T, sfx| {
            let name = format!("synthetic_{sfx}");
            let f = gpu.function(MODULE, &name)?;
            let mut l = gpu.stream().launch_builder(&f);
            l.arg(out.slice_mut::<T>()?)
                .arg(&n)
                .arg(&kind)
                .arg(&a)
                .arg(&seed);
            // SAFETY: out holds n elements of T; the kernel writes exactly those (grid-stride loop).
            unsafe { launch(&mut l, config) }.map_err(launch_err(&name))?;
            Ok(())
        })?;
    } else {
        let name = "synthetic_words";
        let f = gpu.function(MODULE, name)?;
        let mut l = gpu.stream().launch_builder(&f);
        match dtype {
            DType::I32 => l.arg(out.slice_mut::<i32>()?),
            _ => l.arg(out.slice_mut::<u32>()?),
        };
        l.arg(&n).arg(&kind).arg(&seed);
        // SAFETY: out holds n 32-bit words (the fill was checked against the dtype); the kernel writes
        // exactly those.
        unsafe { launch(&mut l, config) }.map_err(launch_err(name))?;
    }
    Ok(out)
}

/// `silu(x[.., :half]) * x[.., half:]` over rows of `2 · half` (the fused gate|up projection).
pub fn silu_mul_halves(x: &Tensor, rows: usize, half: usize) -> Result<Tensor> {
    let gpu = gpu_of(x)?;
    let total = (rows * half) as i64;
    let h = half as i32;
    // The vector path divides 32-bit unit indices.
    let vec = (half.is_multiple_of(vector_len(x.dtype()))
        && rows * half / vector_len(x.dtype()) < i32::MAX as usize) as i32;
    let mut out = GpuBuffer::output(&gpu, x.dtype(), rows * half)?;
    float_dispatch!(x.dtype(), "silu_mul_halves", |T, sfx| {
        let name = format!("silu_mul_halves_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(x.gpu_buffer()?.slice::<T>()?)
            .arg(out.slice_mut::<T>()?)
            .arg(&total)
            .arg(&h)
            .arg(&vec);
        // SAFETY: x holds rows·2·half elements (checked by the caller), out rows·half; unit i reads row
        // i / (half / width) of x (or i / half, scalar) and writes its part of out; with vec both halves of
        // every row are 16-byte aligned.
        let cfg = if vec != 0 {
            vector_elementwise(total as usize, x.dtype())
        } else {
            elementwise(total as usize)
        };
        unsafe { launch(&mut l, cfg) }.map_err(launch_err(&name))?;
        Ok(())
    })?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has a last dimension") = half;
    Tensor::from_gpu_buffer(out, &shape)
}

/// The columns of `x` [rows, w0 + w1 + w2] as three tensors [rows, w_i], in one launch.
pub fn split_columns3(x: &Tensor, rows: usize, widths: [usize; 3]) -> Result<[Tensor; 3]> {
    let gpu = gpu_of(x)?;
    let width: usize = widths.iter().sum();
    let total = (rows * width) as i64;
    let w = widths.map(|v| v as i32);
    let mut outs = [
        GpuBuffer::output(&gpu, x.dtype(), rows * widths[0])?,
        GpuBuffer::output(&gpu, x.dtype(), rows * widths[1])?,
        GpuBuffer::output(&gpu, x.dtype(), rows * widths[2])?,
    ];
    float_dispatch!(x.dtype(), "split_columns3", |T, sfx| {
        let name = format!("split_columns3_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let [a, b, c] = &mut outs;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(x.gpu_buffer()?.slice::<T>()?)
            .arg(a.slice_mut::<T>()?)
            .arg(b.slice_mut::<T>()?)
            .arg(c.slice_mut::<T>()?)
            .arg(&total)
            .arg(&w[0])
            .arg(&w[1])
            .arg(&w[2]);
        // SAFETY: x holds rows·(w0 + w1 + w2) elements (checked by the caller) and output i rows·w_i; each
        // element of x is copied to exactly one in-bounds element of one output.
        unsafe { launch(&mut l, elementwise(total as usize)) }.map_err(launch_err(&name))?;
        Ok(())
    })?;
    let [a, b, c] = outs;
    Ok([
        Tensor::from_gpu_buffer(a, &[rows, widths[0]])?,
        Tensor::from_gpu_buffer(b, &[rows, widths[1]])?,
        Tensor::from_gpu_buffer(c, &[rows, widths[2]])?,
    ])
}

/// Every row of `y` `[m, n]` set to `bias` `[n]` (the C operand of a GEMM with beta = 1).
fn bias_rows(y: &mut GpuBuffer, bias: &Tensor) -> Result<()> {
    let gpu = Arc::clone(&y.gpu);
    let total = y.len() as i64;
    let n = bias.elem_count() as i32;
    let dtype = y.dtype();
    let bb = bias.gpu_buffer()?;
    float_dispatch!(dtype, "bias_rows", |T, sfx| {
        let name = format!("bias_rows_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(y.slice_mut::<T>()?)
            .arg(bb.slice::<T>()?)
            .arg(&total)
            .arg(&n);
        // SAFETY: y holds total elements, a multiple of bias' n elements (checked by the caller).
        unsafe { launch(&mut l, elementwise(total as usize)) }.map_err(launch_err(&name))?;
        Ok(())
    })
}

/// Rotary embedding in place on `x` `[t, heads, d]`, with `inv_freq` `[d/2]` from the CPU's table.
/// The positions (as i32) and `inv_freq` of a forward pass on the GPU, for every layer's [`rope_inplace`].
pub fn upload_rope_inputs(positions: &[usize], inv_freq: &[f32]) -> Result<(GpuBuffer, GpuBuffer)> {
    let gpu = Gpu::shared()?;
    let pos: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
    Ok((
        upload_i32(&gpu, &pos)?,
        GpuBuffer::from_slice(&gpu, inv_freq)?,
    ))
}

/// Slot indices (as i32) on the GPU, for every layer's [`kv_write`].
pub fn upload_slots(slots: &[usize]) -> Result<GpuBuffer> {
    let gpu = Gpu::shared()?;
    let slots: Vec<i32> = slots.iter().map(|&s| s as i32).collect();
    upload_i32(&gpu, &slots)
}

pub fn rope_inplace(x: &mut Tensor, pos_gpu: &GpuBuffer, freq_gpu: &GpuBuffer) -> Result<()> {
    let gpu = gpu_of(x)?;
    let (t, heads, d) = (x.dim(0), x.dim(1), x.dim(2));
    if d == 0 || heads == 0 {
        return Ok(()); // nothing to rotate
    }
    let dtype = x.dtype();
    let xb = x.gpu_buffer_mut()?;
    float_dispatch!(dtype, "rope", |T, sfx| {
        let name = format!("rope_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let (h, dd, vec) = (heads as i32, d as i32, vector_heads(dtype, d));
        let cfg = rope_config(t, heads, d, vec, dtype)?;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(xb.slice_mut::<T>()?)
            .arg(pos_gpu.slice::<i32>()?)
            .arg(freq_gpu.slice::<f32>()?)
            .arg(&h)
            .arg(&dd)
            .arg(&vec);
        // SAFETY: x is [t, heads, d] with d even; positions has t entries and inv_freq d/2 (checked by
        // `rope_inplace_prepared` against the prepared inputs); the block is a multiple of the threads one
        // head needs (`rope_config`); with vec, every half head is 16-byte aligned.
        unsafe { launch(&mut l, cfg) }.map_err(launch_err(&name))?;
        Ok(())
    })
}

/// Writes keys and values `[t, width]` into cache slots `slots[i]` of `kc`, `vc` (`[slots, width]`).
pub fn kv_write(
    k: &Tensor,
    v: &Tensor,
    kc: &mut Tensor,
    vc: &mut Tensor,
    slots_gpu: &GpuBuffer,
    width: usize,
) -> Result<()> {
    let gpu = gpu_of(k)?;
    let rows_n = slots_gpu.len();
    let dtype = k.dtype();
    let (kb, vb) = (k.gpu_buffer()?, v.gpu_buffer()?);
    let kcb = kc.gpu_buffer_mut()?;
    let vcb = vc.gpu_buffer_mut()?;
    float_dispatch!(dtype, "kv_write", |T, sfx| {
        let name = format!("kv_write_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let (w, vec) = (width as i32, vector_rows(dtype, width));
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(kb.slice::<T>()?)
            .arg(vb.slice::<T>()?)
            .arg(kcb.slice_mut::<T>()?)
            .arg(vcb.slice_mut::<T>()?)
            .arg(slots_gpu.slice::<i32>()?)
            .arg(&w)
            .arg(&vec);
        // SAFETY: k, v are [slots, width] (checked by the caller against the prepared slots); every slot
        // is inside the cache (checked when the slots were prepared); with vec, every row is 16-byte
        // aligned.
        unsafe { launch(&mut l, rows(rows_n, THREADS)) }.map_err(launch_err(&name))?;
        Ok(())
    })
}

/// Takes a fused q|k|v projection output `qkv` `[t, (heads + 2·kv_heads)·d]` apart in one launch: returns q
/// `[t, heads, d]` rotated, and writes k (rotated) and v into rows `slots_gpu[i]` of `kc`, `vc`
/// (`[slots, kv_heads·d]`). The same bits as `split_columns3`, `rope_inplace` on q and k, and `kv_write`.
#[allow(clippy::too_many_arguments)]
pub fn qkv_rope_write(
    qkv: &Tensor,
    heads: usize,
    kv_heads: usize,
    kc: &mut Tensor,
    vc: &mut Tensor,
    pos_gpu: &GpuBuffer,
    freq_gpu: &GpuBuffer,
    slots_gpu: &GpuBuffer,
) -> Result<Tensor> {
    let gpu = gpu_of(qkv)?;
    let t = qkv.dim(0);
    let d = 2 * freq_gpu.len();
    let dtype = qkv.dtype();
    if pos_gpu.len() != t || slots_gpu.len() != t || d == 0 {
        return Err(Error::shape(
            "qkv_rope_write",
            format!(
                "{t} rows, {} positions, {} slots, head dim {d}",
                pos_gpu.len(),
                slots_gpu.len()
            ),
        ));
    }
    let mut q = GpuBuffer::output(&gpu, dtype, t * heads * d)?;
    let src = qkv.gpu_buffer()?;
    let (kcb, vcb) = (kc.gpu_buffer_mut()?, vc.gpu_buffer_mut()?);
    float_dispatch!(dtype, "qkv_rope_write", |T, sfx| {
        let name = format!("qkv_rope_write_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let (h, hkv, dd, vec) = (
            heads as i32,
            kv_heads as i32,
            d as i32,
            vector_heads(dtype, d),
        );
        let cfg = rope_config(t, heads + 2 * kv_heads, d, vec, dtype)?;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(src.slice::<T>()?)
            .arg(q.slice_mut::<T>()?)
            .arg(kcb.slice_mut::<T>()?)
            .arg(vcb.slice_mut::<T>()?)
            .arg(pos_gpu.slice::<i32>()?)
            .arg(freq_gpu.slice::<f32>()?)
            .arg(slots_gpu.slice::<i32>()?)
            .arg(&h)
            .arg(&hkv)
            .arg(&dd)
            .arg(&vec);
        // SAFETY: qkv is [t, (heads + 2·kv_heads)·d] and the caches [slots, kv_heads·d] (checked by the
        // caller), q holds t·heads·d; positions and slots have t entries, inv_freq d/2 (checked above), every
        // slot is inside the cache (checked when the slots were prepared); the block is a multiple of the
        // threads one head needs; with vec, every half head is 16-byte aligned.
        unsafe { launch(&mut l, cfg) }.map_err(launch_err(&name))?;
        Ok(())
    })?;
    Tensor::from_gpu_buffer(q, &[t, heads, d])
}

/// Per-row inputs of [`paged_attention`].
pub struct AttentionRows<'a> {
    /// Every sequence's block table, concatenated.
    pub tables: &'a [i32],
    /// Per query row: where its sequence's table starts in `tables`.
    pub row_table: &'a [i32],
    /// Per query row: its position (it sees keys `0..=pos`).
    pub row_pos: &'a [i32],
}

/// Attention of each query row over its sequence's keys `0..=row_pos` read through block tables (the paged
/// cache, or keys in memory as a table of rows with block size 1); `q` `[t, heads, d]`, caches
/// `[slots, kv_heads, d]`, any head dim up to 256, f32 or 16-bit.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    q: &Tensor,
    kc: &Tensor,
    vc: &Tensor,
    rows_info: &AttentionRows,
    kv_heads: usize,
    block_size: usize,
    scale: f32,
) -> Result<Tensor> {
    let gpu = gpu_of(q)?;
    let (t, heads, d) = (q.dim(0), q.dim(1), q.dim(2));
    if d == 0 || d > 256 {
        return Err(Error::Unsupported(format!(
            "GPU attention takes head dims from 1 up to 256, got {d}"
        )));
    }
    let tables = upload_i32(&gpu, rows_info.tables)?;
    let row_table = upload_i32(&gpu, rows_info.row_table)?;
    let row_pos = upload_i32(&gpu, rows_info.row_pos)?;
    let mut out = GpuBuffer::output(&gpu, q.dtype(), q.elem_count())?;
    float_dispatch!(q.dtype(), "paged_attention", |T, sfx| {
        let name = format!("paged_attention_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let (hh, kvh, dd, bs) = (heads as i32, kv_heads as i32, d as i32, block_size as i32);
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(q.gpu_buffer()?.slice::<T>()?)
            .arg(kc.gpu_buffer()?.slice::<T>()?)
            .arg(vc.gpu_buffer()?.slice::<T>()?)
            .arg(tables.slice::<i32>()?)
            .arg(row_table.slice::<i32>()?)
            .arg(row_pos.slice::<i32>()?)
            .arg(out.slice_mut::<T>()?)
            .arg(&hh)
            .arg(&kvh)
            .arg(&dd)
            .arg(&bs)
            .arg(&scale);
        let cfg = LaunchConfig {
            grid_dim: (t as u32, heads as u32, 1),
            block_dim: (32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every row's table and positions were validated by the caller against the cache size.
        unsafe { launch(&mut l, cfg) }.map_err(launch_err(&name))?;
        Ok(())
    })?;
    Tensor::from_gpu_buffer(out, q.shape())
}

/// `out[i] = x[rows[i]]` over the first dimension of a 2-D tensor.
pub fn gather_rows(x: &Tensor, row_ids: &[i32]) -> Result<Tensor> {
    let gpu = gpu_of(x)?;
    let width = x.dim(1);
    let ids = upload_i32(&gpu, row_ids)?;
    let mut out = GpuBuffer::output(&gpu, x.dtype(), row_ids.len() * width)?;
    float_dispatch!(x.dtype(), "gather_rows", |T, sfx| {
        let name = format!("gather_rows_{sfx}");
        let f = gpu.function(MODULE, &name)?;
        let (w, vec) = (width as i32, vector_rows(x.dtype(), width));
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(x.gpu_buffer()?.slice::<T>()?)
            .arg(ids.slice::<i32>()?)
            .arg(out.slice_mut::<T>()?)
            .arg(&w)
            .arg(&vec);
        // SAFETY: every row id is < x.dim(0) (the caller's rows), out is [row_ids, width]; with vec, every
        // row is 16-byte aligned.
        unsafe { launch(&mut l, rows(row_ids.len(), THREADS)) }.map_err(launch_err(&name))?;
        Ok(())
    })?;
    Tensor::from_gpu_buffer(out, &[row_ids.len(), width])
}

fn gemm_nt<T: GpuElement + num_traits_like::One>(
    gpu: &Gpu,
    x: &GpuBuffer,
    w: &GpuBuffer,
    y: &mut GpuBuffer,
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
) -> Result<()>
where
    cudarc::cublas::CudaBlas: Gemm<T>,
{
    let blas = gpu.blas()?;
    // Row-major y[m, n] = x[m, k] · w[n, k]ᵀ is column-major yᵀ (n x m) = wᵀᵀ · xᵀ: A = w read transposed.
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: n as i32,
        n: m as i32,
        k: k as i32,
        alpha: T::one(),
        lda: k as i32,
        ldb: k as i32,
        beta: if accumulate { T::one() } else { T::zero() },
        ldc: n as i32,
    };
    // SAFETY: w holds n*k, x holds m*k and y holds m*n elements of T, matching the leading dimensions.
    unsafe { blas.gemm(cfg, w.slice::<T>()?, x.slice::<T>()?, y.slice_mut::<T>()?) }
        .map_err(|e| cuda_error("cuBLAS gemm", e))
}

/// Tiny local trait for the GEMM scalars (cuBLAS takes alpha and beta in the element type here).
mod num_traits_like {
    pub trait One {
        fn one() -> Self;
        fn zero() -> Self;
    }
    impl One for f32 {
        fn one() -> Self {
            1.0
        }
        fn zero() -> Self {
            0.0
        }
    }
    impl One for half::f16 {
        fn one() -> Self {
            half::f16::ONE
        }
        fn zero() -> Self {
            half::f16::ZERO
        }
    }
    impl One for half::bf16 {
        fn one() -> Self {
            half::bf16::ONE
        }
        fn zero() -> Self {
            half::bf16::ZERO
        }
    }
}

/// `product` (f32, `[m, n]`) = x `[m, k]` · w `[n, k]`ᵀ through cuBLAS with f32 output: no rounding to x's
/// 16-bit type.
fn gemm_nt_f32_product(
    gpu: &Gpu,
    x: &GpuBuffer,
    w: &GpuBuffer,
    product: &mut GpuBuffer,
    (m, k, n): (usize, usize, usize),
) -> Result<()> {
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    let stream = Arc::clone(gpu.stream());
    let (xp, _sx) = match x.dtype() {
        DType::F16 => x.slice::<f16>()?.device_ptr(&stream),
        _ => x.slice::<bf16>()?.device_ptr(&stream),
    };
    let (wp, _sw) = match w.dtype() {
        DType::F16 => w.slice::<f16>()?.device_ptr(&stream),
        _ => w.slice::<bf16>()?.device_ptr(&stream),
    };
    let out = product.slice_mut::<f32>()?;
    let (yp, _sy) = out.device_ptr_mut(&stream);
    // SAFETY: x holds m·k and w n·k elements of x's dtype (same dtype, checked by the caller), the product
    // m·n f32; the pointers stay valid until the stream has run the call (the sync guards live until then).
    unsafe { gemm_nt_f32_product_raw(gpu, x.dtype(), xp, wp, yp, (m, k, n)) }
}

/// The raw form of [`gemm_nt_f32_product`] (the AWQ dequantize + GEMM path calls it on its workspace).
///
/// # Safety
/// `x`, `w` and `product` must address m·k and n·k values of `dtype` (f16 or bf16) and m·n f32 values on
/// this GPU, valid until the stream has run the call.
pub(crate) unsafe fn gemm_nt_f32_product_raw(
    gpu: &Gpu,
    dtype: DType,
    x: cudarc::driver::sys::CUdeviceptr,
    w: cudarc::driver::sys::CUdeviceptr,
    product: cudarc::driver::sys::CUdeviceptr,
    (m, k, n): (usize, usize, usize),
) -> Result<()> {
    use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType_t};
    let ab_type = match dtype {
        DType::F16 => cudaDataType_t::CUDA_R_16F,
        DType::BF16 => cudaDataType_t::CUDA_R_16BF,
        other => {
            return Err(Error::DType {
                op: "GEMM with an f32 product (GPU)",
                expected: DType::F16,
                got: other,
            })
        }
    };
    if [m, k, n].iter().any(|&d| d > i32::MAX as usize) {
        return Err(Error::shape(
            "GEMM with an f32 product (GPU)",
            format!("{m}x{k}x{n} too large for cuBLAS"),
        ));
    }
    let blas = gpu.blas()?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    // Row-major y[m, n] = x · wᵀ is column-major yᵀ (n x m) = wᵀᵀ · xᵀ, as in `gemm_nt`; alpha and beta are
    // f32 as CUBLAS_COMPUTE_32F wants. SAFETY: the caller's contract covers the three matrices.
    cudarc::cublas::result::gemm_ex(
        *blas.handle(),
        cublasOperation_t::CUBLAS_OP_T,
        cublasOperation_t::CUBLAS_OP_N,
        n as i32,
        m as i32,
        k as i32,
        (&alpha) as *const f32 as *const _,
        w as *const _,
        ab_type,
        k as i32,
        x as *const _,
        ab_type,
        k as i32,
        (&beta) as *const f32 as *const _,
        product as *mut _,
        cudaDataType_t::CUDA_R_32F,
        n as i32,
        cublasComputeType_t::CUBLAS_COMPUTE_32F,
        cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
    )
    .map_err(|e| cuda_error("cuBLAS gemm (f32 product)", e))
}

/// y `[m, n]` = round(product `[m, n]` (f32) + bias `[n]`): the bias added before the one rounding to y's type.
fn add_bias_round(product: &GpuBuffer, bias: &Tensor, y: &mut GpuBuffer) -> Result<()> {
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    let gpu = Arc::clone(&y.gpu);
    let stream = Arc::clone(gpu.stream());
    let (total, dtype) = (y.len(), y.dtype());
    let bb = bias.gpu_buffer()?;
    let (pp, _sp) = product.slice::<f32>()?.device_ptr(&stream);
    let ((bp, _sb), (yp, _sy)) = match dtype {
        DType::F16 => (
            bb.slice::<f16>()?.device_ptr(&stream),
            y.slice_mut::<f16>()?.device_ptr_mut(&stream),
        ),
        _ => (
            bb.slice::<bf16>()?.device_ptr(&stream),
            y.slice_mut::<bf16>()?.device_ptr_mut(&stream),
        ),
    };
    // SAFETY: product and y hold total elements, a multiple of bias' n elements (checked by the caller), of
    // the types named; the guards keep them valid until the stream has run the kernel.
    unsafe { add_bias_round_raw(&gpu, dtype, pp, bp, yp, total, bias.elem_count()) }
}

/// The raw form of [`add_bias_round`].
///
/// # Safety
/// `product` must address `total` f32 values, `bias` n and `y` `total` values of `dtype` (f16 or bf16), with
/// `total` a multiple of n, valid until the stream has run the kernel.
pub(crate) unsafe fn add_bias_round_raw(
    gpu: &Gpu,
    dtype: DType,
    product: cudarc::driver::sys::CUdeviceptr,
    bias: cudarc::driver::sys::CUdeviceptr,
    y: cudarc::driver::sys::CUdeviceptr,
    total: usize,
    n: usize,
) -> Result<()> {
    let sfx = match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => {
            return Err(Error::DType {
                op: "add_bias_round",
                expected: DType::F16,
                got: other,
            })
        }
    };
    if total == 0 {
        return Ok(());
    }
    let name = format!("add_bias_round_{sfx}");
    let f = gpu.function(MODULE, &name)?;
    // Eight elements a thread (16-byte accesses) where they share a row and every pointer allows it.
    let vec = if n.is_multiple_of(8) && [product, bias, y].iter().all(|p| p % 16 == 0) {
        8
    } else {
        1
    };
    let threads = total.div_ceil(vec);
    let (total, n, vec) = (total as i64, n as i32, vec as i32);
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(&product)
        .arg(&bias)
        .arg(&y)
        .arg(&total)
        .arg(&n)
        .arg(&vec);
    // SAFETY: the argument list matches `add_bias_round_*` in kernels/ops.cu (3 pointers, an i64, two i32);
    // the caller's contract covers the buffers; with vec = 8, n % 8 == 0 (so total too) and the pointers are
    // 16-byte aligned, as the kernel's vector accesses need.
    launch(&mut l, elementwise(threads)).map_err(launch_err(&name))?;
    Ok(())
}

/// Dense `y = x·wᵀ (+ bias)` with cuBLAS (f32 accumulation); `x` `[m, k]`, `w` `[n, k]`, same dtype.
pub fn dense_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    m: usize,
    k: usize,
    n: usize,
) -> Result<Tensor> {
    let gpu = gpu_of(x)?;
    if w.dtype() != x.dtype() {
        return Err(Error::DType {
            op: "dense_linear (GPU)",
            expected: x.dtype(),
            got: w.dtype(),
        });
    }
    let mut out = GpuBuffer::output(&gpu, x.dtype(), m * n)?;
    // With a bias, one rounding of x·Wᵀ + b: the product comes out of cuBLAS in f32 and a kernel adds the
    // bias and rounds once (adding the bias to a rounded product would round twice). Handing the
    // bias rows to the GEMM as C with beta = 1 does not do that: cuBLAS's f16 kernels on an H100 rounded
    // alpha·x·Wᵀ to f16 before adding beta·C, up to 1.2 ulps off (m = 1 and m = 40, PERF-NOTES.md). The f32
    // product costs 4 more bytes per output element than the C operand did.
    let accumulate = match bias {
        Some(b) if b.dtype() == x.dtype() && b.elem_count() == n && x.dtype() != DType::F32 => {
            let mut product = GpuBuffer::output(&gpu, DType::F32, m * n)?;
            let (xb, wb) = (x.gpu_buffer()?, w.gpu_buffer()?);
            gemm_nt_f32_product(&gpu, xb, wb, &mut product, (m, k, n))?;
            add_bias_round(&product, b, &mut out)?;
            return Tensor::from_gpu_buffer(out, &[m, n]);
        }
        Some(b) if b.dtype() == x.dtype() && b.elem_count() == n => {
            bias_rows(&mut out, b)?;
            true
        }
        Some(b) => {
            return Err(Error::shape(
                "dense_linear (GPU)",
                format!(
                    "bias {:?} of {} for {n} outputs of {}",
                    b.shape(),
                    b.dtype(),
                    x.dtype()
                ),
            ))
        }
        None => false,
    };
    let (xb, wb) = (x.gpu_buffer()?, w.gpu_buffer()?);
    match x.dtype() {
        DType::F32 => gemm_nt::<f32>(&gpu, xb, wb, &mut out, (m, k, n), accumulate)?,
        DType::F16 => gemm_nt::<f16>(&gpu, xb, wb, &mut out, (m, k, n), accumulate)?,
        DType::BF16 => gemm_nt::<bf16>(&gpu, xb, wb, &mut out, (m, k, n), accumulate)?,
        other => {
            return Err(Error::DType {
                op: "dense_linear (GPU)",
                expected: DType::F16,
                got: other,
            })
        }
    }
    Tensor::from_gpu_buffer(out, &[m, n])
}
