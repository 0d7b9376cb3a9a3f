//! `server`: the OpenAI-compatible HTTP server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use awq_kernels::Device;
use clap::Parser;
use internvl::engine::EngineConfig;
use internvl::source::ModelSource;
use internvl::InternVlModel;
use server::media::MediaOptions;
use server::{AppState, Options};

#[derive(Parser)]
#[command(about = "An OpenAI-compatible HTTP server for InternVL 2.5")]
struct Cli {
    /// InternVL 2.5 checkpoint directory. Without it, the small embedded checkpoint with random weights
    /// (its answers are gibberish) is served.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Instead of a checkpoint, a model with the exact shapes of a family member and random weights
    /// (internvl2_5-1b, -4b, -38b, -78b, -78b-awq), for load tests at the real scale.
    #[arg(long, conflicts_with = "model")]
    synthetic: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 23333)]
    port: u16,
    /// Where the language model runs: `cpu`, or `cuda` (builds with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Accepted bearer keys (repeat, or several after one flag); without any, no key is needed.
    #[arg(long = "api-key", num_args = 1..)]
    api_keys: Vec<String>,
    /// The model id clients send (default: the checkpoint folder's name, or `internvl-embedded`).
    #[arg(long)]
    served_model_name: Option<String>,
    /// A folder whose files requests may name as images (`file://` URLs or absolute paths). Without it
    /// no local file is read.
    #[arg(long)]
    allowed_local_media_path: Option<PathBuf>,
    /// Fetch image URLs that point to private, loopback or link-local addresses (refused by default).
    #[arg(long)]
    allow_private_media_urls: bool,
    /// Requests decoded together in one batch at most.
    #[arg(long, default_value_t = 64)]
    max_concurrent: usize,
    /// Requests waiting for a place in the batch at most; past it the server answers 503.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// KV cache size in tokens, all requests together (default: `--max-concurrent` full contexts, at
    /// most `--kv-cache-gib`, at least one full context).
    #[arg(long)]
    kv_cache_tokens: Option<usize>,
    /// Memory for the KV cache when `--kv-cache-tokens` is not given, in GiB (default: 4 on the CPU; on a
    /// GPU, `--gpu-memory-fraction` of the memory left free once the model is loaded).
    #[arg(long)]
    kv_cache_gib: Option<f64>,
    /// On a GPU, the share of the memory left free after loading that the KV cache takes (the rest is
    /// for activations), as lmdeploy's cache_max_entry_count.
    #[arg(long, default_value_t = 0.8)]
    gpu_memory_fraction: f64,
    /// Largest request body accepted, in bytes (images may be sent inline, base64).
    #[arg(long, default_value_t = 64 << 20)]
    max_body_bytes: usize,
    /// Images per request at most.
    #[arg(long, default_value_t = 8)]
    max_images: usize,
    /// Largest image file fetched from a URL or read from disk, in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    max_image_bytes: usize,
    /// Width x height of one image at most.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    max_image_pixels: u64,
    /// 448x448 tiles per request at most, all images together.
    #[arg(long, default_value_t = 64)]
    max_tiles_per_request: usize,
    /// Seconds allowed for fetching one image URL.
    #[arg(long, default_value_t = 10.0)]
    image_fetch_timeout: f64,
}

fn load_model(cli: &Cli) -> Result<InternVlModel> {
    let device = Device::parse(&cli.device)?;
    let source = ModelSource::from_args(cli.model.as_deref(), cli.synthetic.as_deref());
    source
        .load(device)
        .with_context(|| format!("loading {} on {device}", source.describe()))
}

/// The KV cache's memory: `--kv-cache-gib`, else 4 GiB on the CPU, else a share of the GPU's free memory.
fn kv_cache_bytes(cli: &Cli, model: &InternVlModel) -> Result<usize> {
    if let Some(gib) = cli.kv_cache_gib {
        anyhow::ensure!(
            gib > 0.0 && gib.is_finite(),
            "--kv-cache-gib must be positive"
        );
        return Ok((gib * (1u64 << 30) as f64) as usize);
    }
    match model.text.llm.device() {
        Device::Cpu => Ok(4 << 30),
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => {
            anyhow::ensure!(
                cli.gpu_memory_fraction > 0.0 && cli.gpu_memory_fraction < 1.0,
                "--gpu-memory-fraction must be between 0 and 1"
            );
            let (free, total) = awq_kernels::cuda::Gpu::shared_ordinal(i)?.memory()?;
            eprintln!(
                "GPU memory: {:.1} GiB free of {:.1} GiB after loading",
                free as f64 / (1u64 << 30) as f64,
                total as f64 / (1u64 << 30) as f64
            );
            Ok((free as f64 * cli.gpu_memory_fraction) as usize)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => anyhow::bail!("this build has no CUDA support"),
    }
}

/// Large buffers (activations of a batched prefill, images) are mapped and unmapped by glibc rather than
/// kept in its arenas: by default glibc raises this threshold as large blocks are freed, after which the
/// varying sizes of batched passes fragment the heap and the resident size creeps up burst after burst.
/// Fixing it at 1 MiB keeps the server's memory flat under load (checked by `tests/load.rs`).
fn fix_malloc_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a glibc tunable; it is called first thing in main, before other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> Result<()> {
    fix_malloc_mmap_threshold();
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.image_fetch_timeout > 0.0 && cli.image_fetch_timeout.is_finite(),
        "--image-fetch-timeout must be a positive number of seconds"
    );
    let allowed_local_path = cli
        .allowed_local_media_path
        .as_ref()
        .map(|p| {
            p.canonicalize()
                .with_context(|| format!("--allowed-local-media-path {}", p.display()))
        })
        .transpose()?;
    let served_model_name = cli.served_model_name.clone().unwrap_or_else(|| {
        cli.synthetic.clone().unwrap_or_else(|| {
            cli.model
                .as_ref()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "internvl-embedded".to_string())
        })
    });
    let model = load_model(&cli)?;
    let kv_bytes = kv_cache_bytes(&cli, &model)?;
    let mut engine = EngineConfig::sized_for(&model.text, cli.max_concurrent, kv_bytes);
    if let Some(tokens) = cli.kv_cache_tokens {
        engine.kv_cache_tokens = tokens;
    }
    let options = Options {
        served_model_name: served_model_name.clone(),
        api_keys: cli.api_keys.clone(),
        max_body_bytes: cli.max_body_bytes,
        max_images: cli.max_images,
        max_image_pixels: cli.max_image_pixels,
        max_tiles_per_request: cli.max_tiles_per_request,
        max_queue: cli.max_queue,
        media: MediaOptions {
            allowed_local_path,
            allow_private_urls: cli.allow_private_media_urls,
            max_image_bytes: cli.max_image_bytes,
            fetch_timeout: Duration::from_secs_f64(cli.image_fetch_timeout),
        },
    };
    let state = AppState::start(model, engine, options).context("starting the model")?;
    let engine = state.engine_config();
    eprintln!(
        "engine: up to {} requests in a batch, KV cache of {} tokens",
        engine.max_running, engine.kv_cache_tokens
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let address = format!("{}:{}", cli.host, cli.port);
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .with_context(|| format!("binding {address}"))?;
        eprintln!(
            "serving `{served_model_name}` on http://{}",
            listener.local_addr()?
        );
        axum::serve(listener, server::router(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("serving")
    })
}
