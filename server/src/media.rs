//! Where a request's images come from: `data:` URLs (inline base64), `http(s)://` URLs (fetched with a
//! timeout and a size cap, never from a private or loopback address unless the server allows it), and
//! local files (`file://` URLs or absolute paths, only under `--allowed-local-media-path`).
//!
//! Private addresses are refused at every hop: the URL's own host when it is an IP literal, every address
//! a host name resolves to (a resolver that filters the answers, so the address checked is the address
//! connected to: no DNS rebinding between check and use), and every redirect target.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;

use crate::error::ApiError;

/// Where an image is to be read from, as the request names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// The bytes of a `data:` URL, already decoded.
    Inline(Vec<u8>),
    Http(String),
    Local(PathBuf),
}

/// Parses an `image_url.url`.
pub fn parse_image_url(url: &str) -> Result<ImageSource, ApiError> {
    let url = url.trim();
    if let Some(rest) = url.strip_prefix("data:") {
        return decode_data_url(rest).map(ImageSource::Inline);
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(ImageSource::Http(url.to_string()));
    }
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(ImageSource::Local(PathBuf::from(path)));
    }
    if Path::new(url).is_absolute() {
        return Ok(ImageSource::Local(PathBuf::from(url)));
    }
    Err(ApiError::bad_param(
        "image_url",
        "an image URL must be a data:image/...;base64,... URL, an http(s) URL, or a file:// URL or \
         absolute path under the server's --allowed-local-media-path",
    ))
}

fn decode_data_url(rest: &str) -> Result<Vec<u8>, ApiError> {
    let Some((header, data)) = rest.split_once(',') else {
        return Err(ApiError::bad_param(
            "image_url",
            "a data URL must have a `,` between its media type and its data",
        ));
    };
    if !header.ends_with(";base64") {
        return Err(ApiError::bad_param(
            "image_url",
            "only base64 data URLs are supported (data:image/...;base64,...)",
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| {
            ApiError::bad_param(
                "image_url",
                format!("the data URL is not valid base64: {e}"),
            )
        })
}

/// What the server allows when reading images.
#[derive(Debug, Clone)]
pub struct MediaOptions {
    /// The folder local images may come from (canonical); `None`: no local files.
    pub allowed_local_path: Option<PathBuf>,
    /// Fetch URLs that resolve to private, loopback or link-local addresses (for tests and closed networks).
    pub allow_private_urls: bool,
    /// Largest image file, fetched or read, in bytes.
    pub max_image_bytes: usize,
    /// The whole fetch of one URL, connection included.
    pub fetch_timeout: Duration,
}

impl Default for MediaOptions {
    fn default() -> Self {
        MediaOptions {
            allowed_local_path: None,
            allow_private_urls: false,
            max_image_bytes: 32 << 20,
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

/// Reads images for requests under one [`MediaOptions`].
#[derive(Clone)]
pub struct MediaReader {
    options: MediaOptions,
    client: reqwest::Client,
}

impl MediaReader {
    pub fn new(options: MediaOptions) -> Result<MediaReader, reqwest::Error> {
        let allow_private = options.allow_private_urls;
        let policy = redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                return attempt.error("more than 5 redirects");
            }
            match check_url_host(attempt.url(), allow_private) {
                Ok(()) => attempt.follow(),
                Err(reason) => attempt.error(reason),
            }
        });
        let mut builder = reqwest::Client::builder()
            .timeout(options.fetch_timeout)
            .connect_timeout(options.fetch_timeout)
            .redirect(policy)
            .no_proxy()
            .user_agent(concat!("internvl-rs/", env!("CARGO_PKG_VERSION")));
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnlyResolver));
        }
        Ok(MediaReader {
            client: builder.build()?,
            options,
        })
    }

    pub fn options(&self) -> &MediaOptions {
        &self.options
    }

    /// The encoded bytes of `source`.
    pub async fn read(&self, source: ImageSource) -> Result<Vec<u8>, ApiError> {
        match source {
            ImageSource::Inline(bytes) => self.check_size(bytes.len() as u64).map(|_| bytes),
            ImageSource::Http(url) => self.fetch(&url).await,
            ImageSource::Local(path) => self.read_local(&path).await,
        }
    }

    fn check_size(&self, len: u64) -> Result<(), ApiError> {
        let limit = self.options.max_image_bytes;
        if len > limit as u64 {
            return Err(ApiError::image_too_large(format!(
                "an image is larger than the limit of {limit} bytes (--max-image-bytes)"
            )));
        }
        Ok(())
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, ApiError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ApiError::bad_param("image_url", format!("bad image URL: {e}")))?;
        check_url_host(&parsed, self.options.allow_private_urls)
            .map_err(|reason| ApiError::bad_param("image_url", reason))?;
        let failed = |e: reqwest::Error| {
            // The chain holds the resolver's or the redirect policy's reason.
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason = format!("{reason}: {s}");
                source = s.source();
            }
            ApiError::bad_param("image_url", format!("fetching the image failed: {reason}"))
        };
        let mut response = self.client.get(parsed).send().await.map_err(failed)?;
        if !response.status().is_success() {
            return Err(ApiError::bad_param(
                "image_url",
                format!("fetching the image failed: HTTP {}", response.status()),
            ));
        }
        if let Some(len) = response.content_length() {
            self.check_size(len)?;
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            bytes.extend_from_slice(&chunk);
            self.check_size(bytes.len() as u64)?;
        }
        Ok(bytes)
    }

    async fn read_local(&self, path: &Path) -> Result<Vec<u8>, ApiError> {
        let Some(allowed) = &self.options.allowed_local_path else {
            return Err(ApiError::bad_param(
                "image_url",
                "local image paths are not allowed: start the server with --allowed-local-media-path DIR",
            ));
        };
        // One message for "missing" and "outside", so a client learns nothing of files it may not read.
        let refused = || {
            ApiError::bad_param(
                "image_url",
                format!(
                    "{} is not a readable file under the allowed media folder",
                    path.display()
                ),
            )
        };
        let lexical_ok = path.is_absolute()
            && !path.components().any(|c| matches!(c, Component::ParentDir))
            && path.starts_with(allowed);
        if !lexical_ok {
            return Err(refused());
        }
        let path = path.to_path_buf();
        let allowed = allowed.clone();
        let limit = self.options.max_image_bytes;
        let read = tokio::task::spawn_blocking(move || -> Result<Result<Vec<u8>, u64>, ()> {
            // Symbolic links are resolved before the second check, so none leads out of the folder.
            let real = path.canonicalize().map_err(|_| ())?;
            if !real.starts_with(&allowed) {
                return Err(());
            }
            let meta = std::fs::metadata(&real).map_err(|_| ())?;
            if !meta.is_file() {
                return Err(());
            }
            if meta.len() > limit as u64 {
                return Ok(Err(meta.len()));
            }
            std::fs::read(&real).map(Ok).map_err(|_| ())
        })
        .await
        .map_err(|_| ApiError::internal("reading a local image failed"))?;
        match read {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(len)) => self.check_size(len).map(|_| Vec::new()),
            Err(()) => Err(refused()),
        }
    }
}

/// Refuses a URL whose scheme is not http(s) or whose host is a private IP literal.
fn check_url_host(url: &reqwest::Url, allow_private: bool) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "only http and https image URLs are fetched, not {}",
            url.scheme()
        ));
    }
    let Some(host) = url.host_str() else {
        return Err("the image URL has no host".into());
    };
    // IPv6 literals come bracketed; a host that is not an IP literal is checked when resolved.
    let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    else {
        return Ok(());
    };
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(private_refusal(ip))
    }
}

fn private_refusal(ip: IpAddr) -> String {
    format!(
        "the image URL points to {ip}, a private, loopback or link-local address, which this server does \
         not fetch from (start it with --allow-private-media-urls to allow it)"
    )
}

/// Whether `ip` is a globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 64:ff9b::/96 reaches IPv4 space
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier-grade NAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

/// Resolves with the system resolver and keeps only public addresses; a name with none is an error.
struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let reason = match all.first() {
                    Some(a) => private_refusal(a.ip()),
                    None => format!("{host} has no address"),
                };
                return Err(reason.into());
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_and_reserved_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls_are_sorted_into_inline_http_and_local_sources() {
        assert_eq!(
            parse_image_url("data:image/png;base64,AAEC").unwrap(),
            ImageSource::Inline(vec![0, 1, 2])
        );
        assert_eq!(
            parse_image_url(" HTTPS://example.com/a.png").unwrap(),
            ImageSource::Http("HTTPS://example.com/a.png".into())
        );
        assert_eq!(
            parse_image_url("file:///srv/a.png").unwrap(),
            ImageSource::Local("/srv/a.png".into())
        );
        assert_eq!(
            parse_image_url("/srv/a.png").unwrap(),
            ImageSource::Local("/srv/a.png".into())
        );
        for bad in [
            "a.png",
            "ftp://x/a.png",
            "data:image/png,AAEC",
            "data:image/png;base64,@@",
        ] {
            assert_eq!(
                parse_image_url(bad).unwrap_err().status.as_u16(),
                400,
                "{bad}"
            );
        }
    }

    #[test]
    fn private_ip_literals_and_other_schemes_are_refused_before_any_connection() {
        for url in [
            "http://127.0.0.1:8080/a.png",
            "http://[::1]/a.png",
            "https://169.254.169.254/latest",
        ] {
            let url = reqwest::Url::parse(url).unwrap();
            let err = check_url_host(&url, false).unwrap_err();
            assert!(err.contains("private"), "{err}");
            assert!(check_url_host(&url, true).is_ok());
        }
        let ftp = reqwest::Url::parse("ftp://example.com/a.png").unwrap();
        assert!(check_url_host(&ftp, true).is_err());
        let public = reqwest::Url::parse("https://example.com/a.png").unwrap();
        assert!(check_url_host(&public, false).is_ok());
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn local_files_are_read_only_under_the_allowed_folder() {
        let root = std::env::temp_dir().join(format!("media-test-{}", std::process::id()));
        let allowed = root.join("allowed");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::write(allowed.join("a.png"), b"png bytes").unwrap();
        std::fs::write(root.join("secret.txt"), b"secret").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(root.join("secret.txt"), allowed.join("link.png")).unwrap();
        let allowed = allowed.canonicalize().unwrap();
        let reader = MediaReader::new(MediaOptions {
            allowed_local_path: Some(allowed.clone()),
            max_image_bytes: 16,
            ..MediaOptions::default()
        })
        .unwrap();
        let rt = runtime();
        let read = |p: PathBuf| rt.block_on(reader.read(ImageSource::Local(p)));
        assert_eq!(read(allowed.join("a.png")).unwrap(), b"png bytes");
        for outside in [
            root.join("secret.txt"),
            allowed.join("../secret.txt"),
            allowed.join("link.png"),
            allowed.join("missing.png"),
            allowed.clone(),
        ] {
            let err = read(outside.clone()).unwrap_err();
            assert!(
                err.message.contains("not a readable file under"),
                "{outside:?}: {err}"
            );
        }
        std::fs::write(allowed.join("big.png"), [0u8; 17]).unwrap();
        assert_eq!(read(allowed.join("big.png")).unwrap_err().status, 413);
        let no_folder = MediaReader::new(MediaOptions::default()).unwrap();
        let err = rt
            .block_on(no_folder.read(ImageSource::Local(allowed.join("a.png"))))
            .unwrap_err();
        assert!(err.message.contains("--allowed-local-media-path"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
