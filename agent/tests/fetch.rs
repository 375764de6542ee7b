//! `egressd regions fetch` end to end, against an HTTP server this test runs on 127.0.0.1
//! (nothing leaves the host): a first fetch, `304 Not Modified`, a corrupted, an empty and an
//! older file and a server error each refused with nothing on disk changed, and the import
//! of what was fetched. The served files are the project's fixtures (`tests/data/providers`).
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// What the server answers for one path.
#[derive(Clone)]
struct Served {
    status: u16,
    body: Vec<u8>,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// One request the server saw: (path, `If-None-Match`, `If-Modified-Since`).
type Seen = (String, Option<String>, Option<String>);

/// A tiny HTTP/1.1 server on 127.0.0.1 (one request per connection), stopped on drop.
struct Server {
    port: u16,
    routes: Arc<Mutex<HashMap<String, Served>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("addr").port();
        let routes: Arc<Mutex<HashMap<String, Served>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, s, st) = (routes.clone(), seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let _ = serve(c, &r, &s);
                }
            }
        });
        Self {
            port,
            routes,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn set(&self, path: &str, status: u16, body: &[u8], etag: Option<&str>) {
        self.routes.lock().expect("routes").insert(
            path.to_owned(),
            Served {
                status,
                body: body.to_vec(),
                etag: etag.map(str::to_owned),
                last_modified: None,
            },
        );
    }

    /// Serves `path` with a `Last-Modified` date and no `ETag`.
    fn set_dated(&self, path: &str, body: &[u8], date: &str) {
        self.routes.lock().expect("routes").insert(
            path.to_owned(),
            Served {
                status: 200,
                body: body.to_vec(),
                etag: None,
                last_modified: Some(date.to_owned()),
            },
        );
    }

    fn seen(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().expect("seen"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut c: TcpStream,
    routes: &Mutex<HashMap<String, Served>>,
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (mut inm, mut ims) = (None, None);
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("if-none-match") {
                inm = Some(v.trim().to_owned());
            } else if k.eq_ignore_ascii_case("if-modified-since") {
                ims = Some(v.trim().to_owned());
            }
        }
    }
    seen.lock()
        .expect("seen")
        .push((path.clone(), inm.clone(), ims.clone()));
    let served = routes.lock().expect("routes").get(&path).cloned();
    let (status, body, etag, lm) = match served {
        Some(s) if s.etag.is_some() && s.etag == inm => (304, Vec::new(), s.etag, None),
        Some(s) if s.last_modified.is_some() && s.last_modified == ims => {
            (304, Vec::new(), None, s.last_modified)
        }
        Some(s) => (s.status, s.body, s.etag, s.last_modified),
        None => (404, b"not found".to_vec(), None, None),
    };
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(e) = etag {
        head.push_str(&format!("ETag: {e}\r\n"));
    }
    if let Some(d) = lm {
        head.push_str(&format!("Last-Modified: {d}\r\n"));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes())?;
    c.write_all(&body)?;
    c.flush()
}

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/providers")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A temporary directory, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "egressd-fetch-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&p).expect("tempdir");
        Self(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn egressd(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_egressd"));
    cmd.args(args);
    // The test server is local: no proxy may stand in between.
    for v in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    cmd.output().expect("running egressd")
}

/// Every file of `dir` with its bytes and modification time.
fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime)> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            let m = e.metadata().expect("metadata");
            (
                e.file_name().to_string_lossy().into_owned(),
                (
                    std::fs::read(e.path()).expect("read"),
                    m.modified().expect("mtime"),
                ),
            )
        })
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn fetch_end_to_end_conditional_checked_all_or_nothing() {
    let server = Server::start();
    let tmp = Tmp::new();
    let dir = tmp.0.join("ranges");
    let geofeed_url = server.url("/feeds/geofeed.csv");
    let mapping = tmp.0.join("mapping.toml");
    std::fs::write(
        &mapping,
        format!(
            "[aws]\neu = [\"eu-west-1\"]\n[gcp]\neu = [\"europe-west1\"]\n\
             [oracle]\neu = [\"eu-frankfurt-1\"]\n[azure]\neu = [\"germanywc\"]\n\
             [geofeed]\neu = [\"NL\"]\n\
             [fetch]\naws = \"{}\"\ngcp = \"{}\"\noracle = \"{}\"\nazure = \"{}\"\ngeofeed = [\"{geofeed_url}\"]\n",
            server.url("/aws.json"),
            server.url("/gcp.json"),
            server.url("/oracle.json"),
            server.url("/azure.json"),
        ),
    )
    .expect("mapping");
    let aws = fixture("aws-ip-ranges.json");
    let gcp = fixture("google-cloud-ip-ranges.json");
    let oracle = fixture("oracle-cloud-ip-ranges.json");
    let azure = fixture("microsoft-azure-ip-ranges.json");
    let geofeed = fixture("digitalocean.csv");
    server.set("/aws.json", 200, &aws, Some("\"aws-1\""));
    server.set("/gcp.json", 200, &gcp, Some("\"gcp-1\""));
    server.set("/oracle.json", 200, &oracle, Some("\"oracle-1\""));
    server.set("/azure.json", 200, &azure, Some("\"azure-1\""));
    let date = "Mon, 24 Nov 2025 10:00:00 GMT";
    server.set_dated("/feeds/geofeed.csv", &geofeed, date);
    let m = mapping.to_string_lossy().into_owned();
    let d = dir.to_string_lossy().into_owned();
    let fetch = || egressd(&["regions", "fetch", "--mapping", &m, "--dir", &d]);

    // First fetch: every file, as served, with its validators beside it.
    let out = fetch();
    assert!(out.status.success(), "first fetch: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in [
        "aws: updated",
        "gcp: updated",
        "oracle: updated",
        "azure: updated",
        "geofeed: updated",
    ] {
        assert!(stdout.contains(line), "missing `{line}`: {stdout}");
    }
    assert!(stdout.contains("syncToken 1753388594"), "{stdout}");
    let geofeed_file = egressd::policy::import::fetch::file_name(
        egressd::policy::import::Format::Geofeed,
        &geofeed_url,
    );
    for (name, body) in [
        ("aws-ip-ranges.json", &aws),
        ("gcp-cloud.json", &gcp),
        ("oracle-public_ip_ranges.json", &oracle),
        ("azure-service-tags.json", &azure),
        (geofeed_file.as_str(), &geofeed),
    ] {
        assert_eq!(&std::fs::read(dir.join(name)).expect(name), body, "{name}");
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(".aws-ip-ranges.json.http")).expect("meta"))
            .expect("meta JSON");
    assert_eq!(meta["etag"], "\"aws-1\"");
    assert!(
        server
            .seen()
            .iter()
            .all(|(_, inm, ims)| inm.is_none() && ims.is_none()),
        "a first fetch has nothing to be conditional on"
    );

    // Second fetch: conditional (If-None-Match, or If-Modified-Since for the geofeed that
    // has only a date): 304 for each; nothing rewritten.
    let before = snapshot(&dir);
    std::thread::sleep(Duration::from_millis(20));
    let out = fetch();
    assert!(out.status.success(), "second fetch: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for line in [
        "aws: not modified",
        "gcp: not modified",
        "oracle: not modified",
        "azure: not modified",
        "geofeed: not modified",
    ] {
        assert!(stdout.contains(line), "missing `{line}`: {stdout}");
    }
    let seen = server.seen();
    assert!(
        seen.contains(&("/aws.json".into(), Some("\"aws-1\"".into()), None)),
        "If-None-Match not sent: {seen:?}"
    );
    assert!(
        seen.contains(&("/feeds/geofeed.csv".into(), None, Some(date.into()))),
        "If-Modified-Since not sent: {seen:?}"
    );
    assert_eq!(snapshot(&dir), before, "a 304 must not touch the files");

    // A valid newer gcp file together with each bad one: refused, nothing written (not
    // even the good gcp file), and the failure named.
    let newer_gcp = text(&gcp).replace("1753409788780", "1753409788781");
    server.set("/gcp.json", 200, newer_gcp.as_bytes(), Some("\"gcp-2\""));
    let older_aws = text(&aws).replace("1753388594", "1753388593");
    let empty_oracle =
        br#"{"last_updated_timestamp": "2025-07-22T00:00:00.000000", "regions": []}"#;
    let truncated = &aws[..aws.len() / 2];
    let cases: [(&str, u16, &[u8], &str); 5] = [
        ("/aws.json", 200, truncated, "not a valid aws file"),
        (
            "/aws.json",
            200,
            older_aws.as_bytes(),
            "older than the syncToken 1753388594",
        ),
        ("/oracle.json", 200, empty_oracle, "holds no prefix"),
        ("/feeds/geofeed.csv", 200, b"", "holds no prefix"),
        ("/azure.json", 500, b"oops", "HTTP status 500"),
    ];
    for (path, status, body, why) in cases {
        let keep = server.routes.lock().expect("routes").get(path).cloned();
        server.set(path, status, body, Some("\"bad\""));
        let out = fetch();
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{path} ({why}) was accepted");
        assert!(stderr.contains(why), "{path}: want `{why}` in: {stderr}");
        assert!(
            stderr.contains(&server.url(path)),
            "the URL must be named: {stderr}"
        );
        assert!(stderr.contains("nothing was written"), "{stderr}");
        assert_eq!(
            snapshot(&dir),
            before,
            "{path} ({why}) changed the directory"
        );
        if let Some(k) = keep {
            server
                .routes
                .lock()
                .expect("routes")
                .insert(path.to_owned(), k);
        }
    }

    // All good again: gcp changes; aws comes with a new ETag but the same bytes (the file
    // stays, the new ETag is kept for the next request).
    server.set("/aws.json", 200, &aws, Some("\"aws-2\""));
    let out = fetch();
    assert!(
        out.status.success(),
        "fetch after recovery: {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("gcp: updated")
            && stdout.contains("aws: unchanged")
            && stdout.contains("oracle: not modified"),
        "{stdout}"
    );
    assert_eq!(
        snapshot(&dir)["aws-ip-ranges.json"],
        before["aws-ip-ranges.json"],
        "the same bytes must not be rewritten"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(".aws-ip-ranges.json.http")).expect("meta"))
            .expect("meta JSON");
    assert_eq!(meta["etag"], "\"aws-2\"");
    assert_eq!(
        std::fs::read(dir.join("gcp-cloud.json")).expect("gcp"),
        newer_gcp.as_bytes()
    );

    // The import pipeline runs on what was fetched.
    let output = tmp.0.join("eu.toml");
    let o = output.to_string_lossy().into_owned();
    let mut args = vec!["regions", "import", "--mapping", &m, "--output", &o];
    let files: Vec<String> = [
        "aws-ip-ranges.json",
        "gcp-cloud.json",
        "oracle-public_ip_ranges.json",
        "azure-service-tags.json",
        geofeed_file.as_str(),
    ]
    .iter()
    .map(|n| dir.join(n).to_string_lossy().into_owned())
    .collect();
    args.extend(files.iter().map(String::as_str));
    let out = egressd(&args);
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    let imported = std::fs::read_to_string(&output).expect("output");
    assert!(imported.contains("[regions.eu]"), "{imported}");
}

#[test]
fn fetch_refuses_a_mapping_without_azure_url_and_plain_http() {
    let tmp = Tmp::new();
    let mapping = tmp.0.join("mapping.toml");
    std::fs::write(&mapping, "[azure]\neu = [\"germanywc\"]\n").expect("mapping");
    let m = mapping.to_string_lossy().into_owned();
    let d = tmp.0.join("ranges").to_string_lossy().into_owned();
    let out = egressd(&["regions", "fetch", "--mapping", &m, "--dir", &d]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("fetch.azure"),
        "{}",
        text(&out.stderr)
    );
    assert!(!Path::new(&d).exists(), "nothing may be created");
    std::fs::write(
        &mapping,
        "[aws]\neu = [\"eu-west-1\"]\n[fetch]\naws = \"http://198.18.0.1/ip-ranges.json\"\n",
    )
    .expect("mapping");
    let out = egressd(&["regions", "fetch", "--mapping", &m, "--dir", &d]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("mapping.toml:4:7: fetch.aws") && stderr.contains("plain http"),
        "{stderr}"
    );
}
