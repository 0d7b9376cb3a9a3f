//! Times InternViT on the CPU at a real size with random weights (no checkpoint needed):
//!
//! ```sh
//! cargo run --release -p vit --example vit_timing -- [300m|6b] [tiles] [layers]
//! ```
//!
//! `layers` defaults to the real count (24 for 300M, 45 for 6B); fewer layers give a per-layer time quickly.

use std::sync::Arc;
use std::time::Instant;

use awq_kernels::{Tensor, Weights};
use half::bf16;
use vit::{InternVit, NormType, VisionConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flavour = args.get(1).map(String::as_str).unwrap_or("300m");
    let tiles: usize = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(1);
    let mut config = match flavour {
        "300m" => VisionConfig {
            hidden_size: 1024,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            intermediate_size: 4096,
            norm_type: NormType::LayerNorm,
            layer_norm_eps: 1e-6,
            qkv_bias: true,
            qk_normalization: false,
            image_size: 448,
            patch_size: 14,
            num_channels: 3,
        },
        "6b" => VisionConfig {
            hidden_size: 3200,
            num_hidden_layers: 45,
            num_attention_heads: 25,
            intermediate_size: 12800,
            norm_type: NormType::RmsNorm,
            layer_norm_eps: 1e-6,
            qkv_bias: false,
            qk_normalization: true,
            image_size: 448,
            patch_size: 14,
            num_channels: 3,
        },
        other => return Err(format!("unknown flavour `{other}` (300m or 6b)").into()),
    };
    if let Some(layers) = args.get(3) {
        config.num_hidden_layers = layers.parse()?;
    }
    let (c, i, p) = (
        config.hidden_size,
        config.intermediate_size,
        config.patch_size,
    );
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.class_embedding".into(), vec![1, 1, c]),
        ("embeddings.patch_embedding.weight".into(), vec![c, 3, p, p]),
        ("embeddings.patch_embedding.bias".into(), vec![c]),
        (
            "embeddings.position_embedding".into(),
            vec![1, config.tokens_per_tile(), c],
        ),
    ];
    for l in 0..config.num_hidden_layers {
        let pre = format!("encoder.layers.{l}.");
        let mut add = |name: &str, shape: Vec<usize>| shapes.push((format!("{pre}{name}"), shape));
        add("norm1.weight", vec![c]);
        add("norm2.weight", vec![c]);
        if config.norm_type == NormType::LayerNorm {
            add("norm1.bias", vec![c]);
            add("norm2.bias", vec![c]);
        }
        add("attn.qkv.weight", vec![3 * c, c]);
        if config.qkv_bias {
            add("attn.qkv.bias", vec![3 * c]);
        }
        if config.qk_normalization {
            add("attn.q_norm.weight", vec![c]);
            add("attn.k_norm.weight", vec![c]);
        }
        add("attn.proj.weight", vec![c, c]);
        add("attn.proj.bias", vec![c]);
        add("ls1", vec![c]);
        add("ls2", vec![c]);
        add("mlp.fc1.weight", vec![i, c]);
        add("mlp.fc1.bias", vec![i]);
        add("mlp.fc2.weight", vec![c, i]);
        add("mlp.fc2.bias", vec![c]);
    }
    // Small pseudo-random bf16 values (a fixed LCG), so activations stay finite through every layer.
    let mut state = 0x2545_f491_u32;
    let mut data: Vec<Vec<u8>> = Vec::new();
    for (_, shape) in &shapes {
        let n: usize = shape.iter().product();
        let mut bytes = Vec::with_capacity(2 * n);
        for _ in 0..n {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v = ((state >> 9) as f32 / (1u32 << 23) as f32 - 0.5) * 0.05;
            bytes.extend_from_slice(&bf16::from_f32(v).to_le_bytes());
        }
        data.push(bytes);
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = shapes
        .iter()
        .zip(&data)
        .map(|((name, shape), bytes)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::BF16,
                shape.clone(),
                bytes,
            )
            .expect("sizes match");
            (name.clone(), view)
        })
        .collect();
    let file = safetensors::serialize(views, &None)?;
    drop(data);
    let weights = Arc::new(Weights::from_bytes("random", Arc::new(file))?);
    let model = InternVit::load(&config, &weights.scope(""))?;
    let pixels = Tensor::from_vec(
        (0..tiles * 3 * 448 * 448)
            .map(|k| ((k % 251) as f32 - 125.0) / 64.0)
            .collect(),
        &[tiles, 3, 448, 448],
    )?;
    let start = Instant::now();
    let out = model.forward(&pixels)?;
    let secs = start.elapsed().as_secs_f64();
    let finite = out.as_slice::<f32>()?.iter().all(|v| v.is_finite());
    println!(
        "{flavour}: {tiles} tile(s), {} layers, {} threads: {secs:.2} s ({:.2} s per tile-layer), output {:?}, finite: {finite}",
        config.num_hidden_layers,
        rayon::current_num_threads(),
        secs / (tiles * config.num_hidden_layers.max(1)) as f64,
        out.shape()
    );
    Ok(())
}
