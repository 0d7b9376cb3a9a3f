//! Progress of loading a checkpoint from disk.
//!
//! The weight files are memory-mapped and building the model maps its tensors without copying them, so
//! loading is quick and the bytes are read from disk when they are first used: for a large checkpoint that
//! is a long silent stall in the first forward pass (or in the copy to the GPU). The `load_with_progress`
//! loaders ([`crate::TextModel::load_with_progress`], [`crate::InternVlModel::load_with_progress`]) build
//! and check the model as `load` does, then read the weight files through once, so that the page cache
//! holds them, reporting the bytes read to a callback. `load` reports nothing and reads nothing ahead.
//! [`ProgressPrinter`] is the callback the `internvl` program uses: throttled lines on stderr, only for
//! checkpoints of at least [`LARGE_CHECKPOINT_BYTES`].

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::inspect::human_bytes;
use crate::{Error, Result};

/// How far loading has come: bytes of the weight files read, of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadProgress {
    /// Bytes of the weight files read so far.
    pub done: u64,
    /// Bytes of all the weight files.
    pub total: u64,
    /// Weight files read completely so far.
    pub files_done: usize,
    /// Weight files in all.
    pub files: usize,
}

impl LoadProgress {
    /// Whole percent done (100 for an empty checkpoint).
    pub fn percent(&self) -> u64 {
        if self.total == 0 {
            100
        } else {
            (u128::from(self.done) * 100 / u128::from(self.total)) as u64
        }
    }
}

/// Checkpoints with at least this many bytes of weights are large: the program shows their loading progress.
pub const LARGE_CHECKPOINT_BYTES: u64 = 1 << 30;

/// Bytes read between two reports.
const CHUNK: usize = 16 << 20;

/// Reads the weight files of `dir` (those [`awq_kernels::weights::weight_files`] picks) from start to end and
/// reports the bytes read: first `0 / total`, then after every chunk, the last report at `total`.
pub fn read_weight_files(dir: &Path, progress: &mut dyn FnMut(LoadProgress)) -> Result<()> {
    let (_, files) = awq_kernels::weights::weight_files(dir)?;
    read_files(&files, progress)
}

fn read_files(files: &[PathBuf], progress: &mut dyn FnMut(LoadProgress)) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut sizes = Vec::with_capacity(files.len());
    for path in files {
        sizes.push(std::fs::metadata(path).map_err(io(path))?.len());
    }
    let total: u64 = sizes.iter().sum();
    let mut state = LoadProgress {
        done: 0,
        total,
        files_done: 0,
        files: files.len(),
    };
    progress(state);
    let mut buf = vec![0u8; CHUNK];
    // Bytes of the files before the current one, by their measured sizes.
    let mut before = 0u64;
    for (path, &size) in files.iter().zip(&sizes) {
        let mut file = File::open(path).map_err(io(path))?;
        let mut read = 0u64;
        // Up to the measured size: a file that grew since is not read further.
        while read < size {
            let want = (size - read).min(CHUNK as u64) as usize;
            let n = file.read(&mut buf[..want]).map_err(io(path))?;
            if n == 0 {
                break;
            }
            read += n as u64;
            state.done = before + read;
            state.files_done += usize::from(read == size);
            progress(state);
        }
        before += size;
        if size == 0 {
            state.files_done += 1;
        } else if read < size {
            // The file shrank since it was measured: count it as read, so that the reports end at the total.
            state.done = before;
            state.files_done += 1;
            progress(state);
        }
    }
    Ok(())
}

/// One progress line: `loading weights: 3.20 GiB / 15.10 GiB (21%), file 1 of 4`.
pub fn progress_line(p: &LoadProgress) -> String {
    let file = if p.files > 1 {
        format!(", file {} of {}", (p.files_done + 1).min(p.files), p.files)
    } else {
        String::new()
    };
    format!(
        "loading weights: {} / {} ({}%){file}",
        human_bytes(p.done),
        human_bytes(p.total),
        p.percent()
    )
}

/// Writes [`progress_line`]s for large checkpoints: nothing when the weights are smaller than `min_total`,
/// else the first report, then at most one line per `interval`, and always the one reaching the total.
pub struct ProgressPrinter<W: Write> {
    out: W,
    min_total: u64,
    interval: Duration,
    last: Option<Instant>,
}

impl ProgressPrinter<std::io::Stderr> {
    /// Lines on stderr, every 2 seconds, for checkpoints of at least [`LARGE_CHECKPOINT_BYTES`].
    pub fn stderr() -> Self {
        ProgressPrinter::new(
            std::io::stderr(),
            LARGE_CHECKPOINT_BYTES,
            Duration::from_secs(2),
        )
    }
}

impl<W: Write> ProgressPrinter<W> {
    pub fn new(out: W, min_total: u64, interval: Duration) -> Self {
        ProgressPrinter {
            out,
            min_total,
            interval,
            last: None,
        }
    }

    /// The callback: prints `p` if it is due.
    pub fn report(&mut self, p: LoadProgress) {
        if p.total < self.min_total {
            return;
        }
        let now = Instant::now();
        let due = p.done >= p.total
            || self
                .last
                .is_none_or(|t| now.duration_since(t) >= self.interval);
        if due {
            self.last = Some(now);
            // Progress is informational: a closed stderr must not fail the load.
            let _ = writeln!(self.out, "{}", progress_line(&p));
        }
    }

    /// The writer, e.g. to inspect what was printed.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(rel)
    }

    fn assert_monotonic_to_total(events: &[LoadProgress], total: u64, files: usize) {
        assert!(events.len() >= 2, "{events:?}");
        assert_eq!(events[0].done, 0);
        for w in events.windows(2) {
            assert!(w[1].done > w[0].done, "not increasing: {events:?}");
            assert!(w[1].files_done >= w[0].files_done, "{events:?}");
        }
        let last = events.last().unwrap();
        assert_eq!((last.done, last.total), (total, total));
        assert_eq!(last.percent(), 100);
        assert!(events.iter().all(|e| e.total == total && e.files == files));
    }

    /// The number of `pytorch_model-*.bin` shards in `dir` and their total size.
    fn shard_sizes(dir: &std::path::Path) -> (usize, u64) {
        let sizes: Vec<u64> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("pytorch_model-") && name.ends_with(".bin")
            })
            .map(|e| e.metadata().unwrap().len())
            .collect();
        (sizes.len(), sizes.iter().sum())
    }

    #[test]
    fn reading_shards_reports_increasing_bytes_ending_at_their_total_size() {
        let dir = fixture("bin/internvl-tiny-bf16/bin");
        let (shards, total) = shard_sizes(&dir);
        let mut events = Vec::new();
        read_weight_files(&dir, &mut |p| events.push(p)).unwrap();
        assert!(shards >= 3, "the fixture has several shards");
        assert_monotonic_to_total(&events, total, shards);
        // One report per shard (each is smaller than a chunk) after the first.
        assert_eq!(events.len(), shards + 1);
        assert_eq!(events.last().unwrap().files_done, shards);
    }

    #[test]
    fn loading_an_internvl_checkpoint_with_progress_reports_its_shards_up_to_their_total() {
        let dir = fixture("bin/internvl-tiny-bf16/bin");
        let (shards, total) = shard_sizes(&dir);
        let mut events = Vec::new();
        let model =
            crate::InternVlModel::load_with_progress(&dir, &mut |p| events.push(p)).unwrap();
        assert_monotonic_to_total(&events, total, shards);
        let plain = crate::InternVlModel::load(&dir).unwrap();
        assert_eq!(model.image_tokens, plain.image_tokens);
        assert_eq!(model.text.stop_ids, plain.text.stop_ids);
    }

    #[test]
    fn loading_a_qwen2_checkpoint_with_progress_ends_at_the_size_of_its_safetensors_file() {
        let dir = fixture("qwen2-0.5b-like");
        let total = std::fs::metadata(dir.join("model.safetensors"))
            .unwrap()
            .len();
        let mut events = Vec::new();
        let model = crate::TextModel::load_with_progress(&dir, &mut |p| events.push(p)).unwrap();
        assert_monotonic_to_total(&events, total, 1);
        assert_eq!(
            model.stop_ids,
            crate::TextModel::load(&dir).unwrap().stop_ids
        );
    }

    #[test]
    fn a_checkpoint_with_a_bad_config_fails_before_any_progress_is_reported() {
        let dir =
            std::env::temp_dir().join(format!("internvl-progress-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = fixture("qwen2-0.5b-like");
        for f in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        std::fs::write(
            dir.join("config.json"),
            "{\"llm_config\": {}, \"vision_config\": {}}",
        )
        .unwrap();
        let mut events = Vec::new();
        assert!(crate::InternVlModel::load_with_progress(&dir, &mut |p| events.push(p)).is_err());
        assert!(crate::TextModel::load_with_progress(&dir, &mut |p| events.push(p)).is_err());
        assert!(events.is_empty(), "{events:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_without_weights_is_an_error_and_reports_nothing() {
        let mut events = Vec::new();
        let err = read_weight_files(&fixture("tokenizer"), &mut |p| events.push(p));
        assert!(err.is_err());
        assert!(events.is_empty());
    }

    #[test]
    fn the_printer_is_silent_for_small_checkpoints() {
        let mut printer = ProgressPrinter::new(Vec::new(), 1000, Duration::ZERO);
        for done in [0, 500, 999] {
            printer.report(LoadProgress {
                done,
                total: 999,
                files_done: 0,
                files: 1,
            });
        }
        assert!(printer.into_inner().is_empty());
    }

    #[test]
    fn the_printer_throttles_but_always_prints_the_first_and_the_last_line() {
        let mut printer = ProgressPrinter::new(Vec::new(), 1, Duration::from_secs(3600));
        let total = 3 << 30;
        for done in [0, 1 << 30, 2 << 30, total] {
            printer.report(LoadProgress {
                done,
                total,
                files_done: usize::from(done == total) * 2,
                files: 2,
            });
        }
        let text = String::from_utf8(printer.into_inner()).unwrap();
        assert_eq!(
            text,
            "loading weights: 0 B / 3.00 GiB (0%), file 1 of 2\n\
             loading weights: 3.00 GiB / 3.00 GiB (100%), file 2 of 2\n"
        );
    }
}
