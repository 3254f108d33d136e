//! The `/metrics` endpoint of the real `smb3-csi controller` binary, scraped
//! while it serves CSI RPCs (played as external-provisioner plays them) against
//! the private Samba; `/healthz`, bad paths and methods; `--log-format json`
//! output; and that no secret reaches a metric or a log line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::csi::{connect, create_request, delete, provision, Claim, StorageClass};
use smb3_csi::csi::proto::controller_client::ControllerClient;
use smb3_csi::csi::proto::identity_client::IdentityClient;
use smb3_csi::csi::proto::{CreateVolumeRequest, ProbeRequest};
use smb3_testkit::{Samba, SambaProfile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::Code;

/// The driver binary running `controller` with metrics and JSON logs.
struct Driver {
    child: Option<Child>,
    socket: PathBuf,
    metrics: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("csi.sock");
        let log = smb3_testkit::run_log::log_path("plugin").unwrap_or_else(|| dir.path().join("driver.log"));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_smb3-csi"))
            .args(["controller", "--endpoint", &format!("unix://{}", socket.display())])
            .args(["--metrics-address", &metrics.to_string()])
            // Debug for our crate: the request lines (secrets redacted) are logged too.
            .args(["--log-format", "json", "--log-level", "info,smb3_csi=debug"])
            .env_remove("RUST_LOG")
            .env_remove("METRICS_ADDRESS")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let driver = Driver { child: Some(child), socket, metrics, log, _dir: dir };
        for _ in 0..200 {
            if let Ok((200, _, _)) = driver.try_get("/healthz").await {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("metrics endpoint never answered; log:\n{}", driver.logs());
    }

    async fn channel(&self) -> Channel {
        connect(&self.socket).await
    }

    async fn try_get(&self, path: &str) -> std::io::Result<(u16, String, String)> {
        http(self.metrics, &format!("GET {path} HTTP/1.1\r\nHost: scraper\r\n\r\n")).await
    }

    async fn get(&self, path: &str) -> (u16, String, String) {
        self.try_get(path).await.unwrap()
    }

    async fn scrape(&self) -> Scrape {
        let (status, head, body) = self.get("/metrics").await;
        smb3_testkit::run_log::record("metrics", &body);
        assert_eq!(status, 200, "{head}{body}");
        assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
        Scrape::parse(&body)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, a clean exit, and everything the driver logged.
    async fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "{status:?}\n{}", self.logs());
        assert!(tokio::net::TcpStream::connect(self.metrics).await.is_err(), "metrics still served after exit");
        self.logs()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One raw HTTP exchange: status, head (lowercased: header names are
/// case-insensitive, and hyper writes them in lower case), body.
async fn http(addr: SocketAddr, request: &str) -> std::io::Result<(u16, String, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .map_err(|_| std::io::Error::other("no answer in 10 s"))??;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other("no end of head"))?;
    let head = head.to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| std::io::Error::other("status"))?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| std::io::Error::other("no Content-Length"))?;
    let expected = if request.starts_with("HEAD ") { 0 } else { length };
    assert_eq!(expected, body.len(), "Content-Length of {head}");
    Ok((status, format!("{head}\r\n"), body.to_string()))
}

/// A parsed and validated text exposition (format 0.0.4).
struct Scrape {
    text: String,
    /// `name{k="v",...}` exactly as exposed -> value.
    samples: BTreeMap<String, f64>,
    types: HashMap<String, String>,
}

struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut types = HashMap::new();
        let mut helps = HashSet::new();
        let mut samples = BTreeMap::new();
        let mut parsed = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(helps.insert(name.to_string()), "two HELP lines for {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
                assert!(valid_name(name), "{line}");
                assert!(
                    !parsed.iter().any(|s: &Sample| family_of(&s.name, &types) == name),
                    "TYPE after samples: {line}"
                );
                assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "two TYPE lines: {line}");
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "stray line {line:?}");
                let sample = parse_sample(line);
                let family = family_of(&sample.name, &types);
                let kind = types.get(&family).unwrap_or_else(|| panic!("no TYPE before {line}"));
                assert!(helps.contains(&family), "no HELP for {family}");
                assert!(family.starts_with("smb3_csi_") || family.starts_with("process_"), "{line}");
                if kind == "counter" {
                    assert!(family.ends_with("_total") && sample.value >= 0.0, "{line}");
                }
                let key = line.rsplit_once(' ').unwrap().0.to_string();
                assert!(samples.insert(key, sample.value).is_none(), "duplicate series {line}");
                parsed.push(sample);
            }
        }
        check_histograms(&parsed, &types);
        Scrape { text: text.to_string(), samples, types }
    }

    /// A series' value; absent series (not yet observed) count as 0.
    fn value(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|k| k == "histogram") {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

/// `name{a="x",b="y\"z"} 1.5`, with the format's label value escapes.
fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value: {line}"));
    let name = &line[..name_end];
    assert!(valid_name(name), "{line}");
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = inner.split_once("=\"").unwrap_or_else(|| panic!("label: {line}"));
            assert!(valid_name(label), "{line}");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => panic!("bad escape {other:?} in {line}"),
                    },
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value: {line}"),
                }
            };
            labels.push((label.to_string(), value));
            inner = &after[end + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no space before value: {line}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("value {v:?}: {line}")),
    };
    Sample { name: name.to_string(), labels, value }
}

/// A histogram series: family and labels other than `le`.
type Series = (String, Vec<(String, String)>);

/// Buckets ascend by `le` with non-decreasing counts, end in `+Inf`, and
/// `+Inf` equals `_count`.
fn check_histograms(samples: &[Sample], types: &HashMap<String, String>) {
    let mut buckets: BTreeMap<Series, Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    for s in samples {
        let family = family_of(&s.name, types);
        if types[&family] != "histogram" {
            continue;
        }
        if s.name.ends_with("_bucket") {
            let le = s.labels.iter().find(|(k, _)| k == "le").unwrap_or_else(|| panic!("{} without le", s.name));
            let le = if le.1 == "+Inf" { f64::INFINITY } else { le.1.parse().unwrap() };
            let rest: Vec<_> = s.labels.iter().filter(|(k, _)| k != "le").cloned().collect();
            buckets.entry((family, rest)).or_default().push((le, s.value));
        } else if s.name.ends_with("_count") {
            counts.insert((family, s.labels.clone()), s.value);
        }
    }
    assert_eq!(buckets.len(), counts.len(), "every histogram series has buckets and a count");
    for (series, list) in &buckets {
        assert!(list.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{series:?}: {list:?}");
        let (last_le, last_count) = *list.last().unwrap();
        assert_eq!(last_le, f64::INFINITY, "{series:?}");
        assert_eq!(Some(&last_count), counts.get(series), "{series:?}: +Inf bucket vs _count");
    }
}

fn rpc(method: &str, code: &str) -> String {
    format!("smb3_csi_rpc_requests_total{{method=\"/csi.v1.{method}\",code=\"{code}\"}}")
}

/// The JSON log lines: every line is one JSON object.
fn json_lines(logs: &str) -> Vec<serde_json::Value> {
    logs.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            // serde_json keeps the last of two equal keys; a log line must not have any.
            assert!(!has_duplicate_keys(l), "duplicate JSON keys: {l}");
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object() && v["timestamp"].is_string() && v["level"].is_string(), "{l}");
            v
        })
        .collect()
}

/// Whether any JSON object in `line` repeats a key (checked on the raw text,
/// since parsing would silently keep only the last one).
fn has_duplicate_keys(line: &str) -> bool {
    // A stack of key sets, one per open object; strings are skipped whole.
    let mut stack: Vec<HashSet<String>> = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => stack.push(HashSet::new()),
            b'}' => {
                stack.pop();
            }
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                let text = &line[start..i.min(line.len())];
                let rest = line.get(i + 1..).unwrap_or_default().trim_start();
                if rest.starts_with(':') {
                    if let Some(keys) = stack.last_mut() {
                        if !keys.insert(text.to_string()) {
                            return true;
                        }
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// The "CSI RPC done/failed" lines of `method`.
fn rpc_lines<'a>(lines: &'a [serde_json::Value], method: &str) -> Vec<&'a serde_json::Value> {
    let path = format!("/csi.v1.{method}");
    lines
        .iter()
        .filter(|l| {
            let message = l["fields"]["message"].as_str().unwrap_or_default();
            message.starts_with("CSI RPC ") && l["span"]["method"] == path.as_str()
        })
        .collect()
}

fn assert_rpc_line(line: &serde_json::Value, code: &str) {
    assert_eq!(line["span"]["name"], "csi_rpc", "{line}");
    assert_eq!(line["fields"]["code"], code, "{line}");
    let ms = line["fields"]["duration_ms"].as_f64().unwrap_or_else(|| panic!("duration_ms: {line}"));
    assert!(ms >= 0.0, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_paths_probe_counts_and_json_logs() {
    let driver = Driver::start().await;
    let before = driver.scrape().await;
    assert_eq!(before.types["smb3_csi_rpc_duration_seconds"], "histogram");
    assert_eq!(before.types["smb3_csi_smb_sessions_open"], "gauge");
    assert_eq!(before.value("smb3_csi_build_info{version=\"0.1.0\"}"), 1.0);
    // The process families, as other Kubernetes components export them.
    for (family, kind) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_start_time_seconds", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_threads", "gauge"),
    ] {
        assert_eq!(before.types.get(family).map(String::as_str), Some(kind), "{family}: {}", before.text);
    }
    assert!(before.value("process_resident_memory_bytes") > 0.0, "{}", before.text);
    // A tokio runtime, the CSI socket and the metrics listener at least.
    assert!(before.value("process_threads") >= 2.0, "{}", before.text);
    assert!(before.value("process_open_fds") >= 3.0, "{}", before.text);
    assert!(before.value("process_max_fds") >= before.value("process_open_fds"), "{}", before.text);

    let (status, _, body) = driver.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    for path in ["/metric", "/metrics/", "/metrics/x", "/", "/../metrics", "/healthz/x"] {
        assert_eq!(driver.get(path).await.0, 404, "{path}");
    }
    let (status, head, body) =
        http(driver.metrics, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await.unwrap();
    assert_eq!(status, 405, "{head}{body}");
    assert!(head.contains("allow: get,head"), "{head}");
    assert_eq!(http(driver.metrics, "GARBAGE\r\n\r\n").await.unwrap().0, 400);
    let (status, head, body) = http(driver.metrics, "HEAD /metrics HTTP/1.0\r\n\r\n").await.unwrap();
    assert_eq!((status, body.as_str()), (200, ""), "{head}");
    assert!(!head.contains("content-length: 0\r\n"), "HEAD announces the GET length: {head}");

    let channel = driver.channel().await;
    let mut identity = IdentityClient::new(channel.clone());
    for _ in 0..3 {
        identity.probe(ProbeRequest {}).await.unwrap();
    }
    // Refused before any SMB traffic: counted under its own code.
    let mut controller = ControllerClient::new(channel);
    let status = controller.create_volume(CreateVolumeRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let after = driver.scrape().await;
    let probes = rpc("Identity/Probe", "OK");
    assert_eq!(after.value(&probes) - before.value(&probes), 3.0, "{}", after.text);
    let invalid = rpc("Controller/CreateVolume", "InvalidArgument");
    assert_eq!(after.value(&invalid) - before.value(&invalid), 1.0, "{}", after.text);
    let duration_count = invalid.replace("rpc_requests_total", "rpc_duration_seconds_count");
    assert_eq!(after.value(&duration_count), after.value(&invalid));

    let metrics_address = driver.metrics.to_string();
    let logs = driver.stop().await;
    let lines = json_lines(&logs);
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "serving /metrics and /healthz"
            && l["fields"]["address"] == metrics_address.as_str()),
        "{logs}"
    );
    let creates = rpc_lines(&lines, "Controller/CreateVolume");
    assert_eq!(creates.len(), 1, "{logs}");
    assert_rpc_line(creates[0], "InvalidArgument");
    assert_eq!(creates[0]["level"], "WARN");
    assert_eq!(creates[0]["fields"]["message"], "CSI RPC failed", "{}", creates[0]);
    assert_eq!(creates[0]["fields"]["error"], "name is required", "{}", creates[0]);
    // Identity RPCs that succeed log at debug level, still with their fields.
    let probes = rpc_lines(&lines, "Identity/Probe");
    assert_eq!(probes.len(), 3, "{logs}");
    probes.iter().for_each(|l| assert_rpc_line(l, "Ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_provisioning_against_samba() {
    let Some(samba) = Samba::shared(SambaProfile::EncryptRequired) else {
        eprintln!("skipped: Samba is not installed (CI=true makes this a failure)");
        return;
    };
    let base = "metrics-provisioning";
    let _ = std::fs::remove_dir_all(samba.share_path().join(base));
    let driver = Driver::start().await;
    let before = driver.scrape().await;

    let mut controller = ControllerClient::new(driver.channel().await);
    let class = StorageClass::for_samba(samba, base);
    let mut volume_ids = Vec::new();
    for name in ["web", "db"] {
        let claim = Claim::new("shop", name, 1 << 30);
        let volume = provision(&mut controller, create_request(&class, &claim)).await.unwrap();
        volume_ids.push(volume.volume_id);
    }
    for id in &volume_ids {
        delete(&mut controller, id, &class).await.unwrap();
    }
    // A wrong password: refused by the server, and must not show up anywhere.
    let wrong_password = smb3_testkit::run_log::test_password("Wr0ng-Pa55word-metrics-test");
    let wrong = class.clone().with_password(wrong_password.expose());
    let refused = provision(&mut controller, create_request(&wrong, &Claim::new("shop", "nope", 1 << 30))).await;
    let refused_code = refused.unwrap_err().code();

    let after = driver.scrape().await;
    let moved = |series: &str| after.value(series) - before.value(series);
    assert!(moved(&rpc("Controller/CreateVolume", "OK")) >= 2.0, "{}", after.text);
    assert!(moved(&rpc("Controller/DeleteVolume", "OK")) >= 2.0, "{}", after.text);
    let refused_series = rpc("Controller/CreateVolume", smb3_csi::metrics::code_name(refused_code));
    assert!(moved(&refused_series) >= 1.0, "{refused_series}: {}", after.text);
    assert!(moved("smb3_csi_smb_bytes_sent_total") > 1000.0, "{}", after.text);
    assert!(moved("smb3_csi_smb_bytes_received_total") > 1000.0, "{}", after.text);
    assert!(moved("smb3_csi_smb_sessions_established_total") >= 1.0, "{}", after.text);
    // The pool keeps the good session for reuse.
    assert!(after.value("smb3_csi_smb_sessions_open") >= 1.0, "{}", after.text);
    for command in ["NEGOTIATE", "SESSION_SETUP", "TREE_CONNECT", "CREATE"] {
        let series = format!("smb3_csi_smb_request_duration_seconds_count{{command=\"{command}\"}}");
        assert!(moved(&series) >= 1.0, "{series}: {}", after.text);
    }
    // Counters never go down between scrapes.
    for (series, value) in &before.samples {
        let family = series.split(['{', ' ']).next().unwrap();
        let family = family_of(family, &before.types);
        if before.types[&family] == "counter" || before.types[&family] == "histogram" && !series.contains("_sum") {
            assert!(after.value(series) >= *value, "{series} went from {value} to {}", after.value(series));
        }
    }

    let password = samba.password().expose();
    for text in [&before.text, &after.text] {
        assert!(!text.contains(password), "the share password is in a scrape");
        assert!(!text.contains("Wr0ng-Pa55word"), "a password is in a scrape");
    }
    let logs = driver.stop().await;
    assert!(!logs.contains(password), "the share password is in the log");
    assert!(!logs.contains("Wr0ng-Pa55word"), "a password is in the log");
    let lines = json_lines(&logs);
    let deletes = rpc_lines(&lines, "Controller/DeleteVolume");
    for id in &volume_ids {
        let line = deletes
            .iter()
            .find(|l| l["span"]["volume_id"] == id.as_str() && l["fields"]["code"] == "Ok")
            .unwrap_or_else(|| panic!("no DeleteVolume line for {id}:\n{logs}"));
        assert_rpc_line(line, "Ok");
    }
    let creates = rpc_lines(&lines, "Controller/CreateVolume");
    assert!(creates.iter().filter(|l| l["fields"]["code"] == "Ok").count() >= 2, "{logs}");
    // The debug line shows the request with its secrets redacted.
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "CSI request"
            && l["fields"]["request"].as_str().is_some_and(|r| r.contains("<redacted>"))),
        "{logs}"
    );
}

#[tokio::test]
async fn bad_or_taken_metrics_address_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}", dir.path().join("csi.sock").display());
    let run = |address: String| {
        let out = Command::new(env!("CARGO_BIN_EXE_smb3-csi"))
            .args(["controller", "--endpoint", &endpoint, "--metrics-address", &address])
            .env_remove("METRICS_ADDRESS")
            .output()
            .unwrap();
        smb3_testkit::run_log::record_output("cli", &out);
        out
    };
    let out = run("9808".into());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expected [HOST]:PORT"), "{stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = run(address.clone());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("--metrics-address {address}")), "{stderr}");
    assert!(!dir.path().join("csi.sock").exists(), "no CSI socket when metrics cannot start");
}

#[test]
fn duplicate_key_check_sees_duplicates() {
    assert!(has_duplicate_keys(r#"{"fields":{"message":"a","code":1,"message":"b"}}"#));
    assert!(has_duplicate_keys(r#"{"a":1,"b":{"c":2},"a":3}"#));
    assert!(!has_duplicate_keys(
        r#"{"message":"a","fields":{"message":"x \" \"message\": y"},"spans":[{"name":"n"},{"name":"n"}]}"#
    ));
    assert!(!has_duplicate_keys(r#"{"a":"unterminated"#));
}
