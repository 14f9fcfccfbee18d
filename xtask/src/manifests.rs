//! `cargo xtask manifests` (also a step of `cargo xtask test`): the deployment files under
//! deploy/ checked offline with maintained validators from the package registries, not by
//! eye.
//!
//! - deploy/kubernetes/*.yaml: every built-in kind against the Kubernetes API's own schemas
//!   (`kubernetes-validate --strict`, PyPI, which bundles them: unknown fields fail), and
//!   the ServiceMonitor against the Prometheus Operator's CRD schema
//!   (`@kubernetes-models/prometheus-operator`, npm).
//! - deploy/prometheus/*.yml: `promtool check rules` (Debian's prometheus package).
//! - deploy/grafana/*.json: valid JSON whose every PromQL expression promtool parses.
//!
//! The validators are pinned and installed once under target/manifest-check.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{run_checked, setup, workspace_root};

const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
const PROMETHEUS_OPERATOR_MODELS: &str = "@kubernetes-models/prometheus-operator@6.0.0";
/// The Kubernetes version the manifests must be valid for.
const KUBERNETES_VERSION: &str = "1.33.0";

fn say(msg: &str) {
    eprintln!("xtask manifests: {msg}");
}

pub fn run() -> anyhow::Result<()> {
    setup::install_packages(
        &[
            ("python3-venv", "a virtualenv for kubernetes-validate"),
            (
                "prometheus",
                "promtool checks the alert rules and dashboard queries",
            ),
        ],
        say,
    )?;
    // Node may come from elsewhere than Debian (NodeSource's nodejs bundles npm and
    // conflicts with Debian's npm): what counts is that both commands run.
    let runs = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !runs("node") || !runs("npm") {
        setup::install_packages(
            &[
                ("nodejs", "runs the Prometheus Operator's schema validator"),
                ("npm", "installs the Prometheus Operator's schema validator"),
            ],
            say,
        )?;
    }
    let root = workspace_root();
    let tools = root.join("target/manifest-check");
    let venv = tools.join("venv");
    if !venv.join("bin/kubernetes-validate").exists() {
        run_checked(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run_checked(Command::new(venv.join("bin/pip")).args([
            "install",
            "-q",
            KUBERNETES_VALIDATE,
        ]))?;
    }
    let npm_dir = tools.join("npm");
    if !npm_dir
        .join("node_modules/@kubernetes-models/prometheus-operator")
        .exists()
    {
        fs::create_dir_all(&npm_dir)?;
        run_checked(
            Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(&npm_dir)
                .arg(PROMETHEUS_OPERATOR_MODELS),
        )?;
    }

    let kube = root.join("deploy/kubernetes/droptrace.yaml");
    kubernetes(&venv, &npm_dir, &kube)?;
    let alerts = root.join("deploy/prometheus/droptrace-alerts.yml");
    run_checked(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(&alerts),
    )?;
    dashboard(
        &root.join("deploy/grafana/droptrace-dashboard.json"),
        &tools,
    )?;
    say("deploy/: Kubernetes manifests, alert rules and dashboard are valid");
    Ok(())
}

/// Built-in kinds against the API schemas (strict), CRDs against their own.
fn kubernetes(venv: &Path, npm_dir: &Path, file: &Path) -> anyhow::Result<()> {
    let out = Command::new(venv.join("bin/kubernetes-validate"))
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .arg(file)
        .output()
        .context("cannot run kubernetes-validate")?;
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // A kind without a schema is only a warning there: each must be one checked below.
    let unchecked: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("Couldn't find schema") && !l.contains("kind ServiceMonitor "))
        .collect();
    if !out.status.success() || !unchecked.is_empty() {
        bail!("kubernetes-validate {}: {}", file.display(), report.trim());
    }
    let passed = report.lines().filter(|l| l.contains(" passed ")).count();

    // The CRD objects as JSON (PyYAML comes with kubernetes-validate), one per line.
    let json = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import json, sys, yaml\n\
             for d in yaml.safe_load_all(open(sys.argv[1])):\n\
             \x20   if d and d.get('kind') == 'ServiceMonitor':\n\
             \x20       print(json.dumps(d))",
        ])
        .arg(file)
        .output()?;
    if !json.status.success() {
        bail!(
            "cannot read {}: {}",
            file.display(),
            String::from_utf8_lossy(&json.stderr)
        );
    }
    let docs = String::from_utf8(json.stdout)?;
    if docs.lines().count() != 1 {
        bail!("{} should hold one ServiceMonitor", file.display());
    }
    let script = npm_dir.join("validate-servicemonitor.mjs");
    fs::write(
        &script,
        "import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';\n\
         import { readFileSync } from 'node:fs';\n\
         for (const line of readFileSync(0, 'utf8').split('\\n').filter(Boolean)) {\n\
         \x20 new ServiceMonitor(JSON.parse(line)).validate();\n\
         }\n",
    )?;
    let mut child = Command::new("node")
        .arg(&script)
        .current_dir(npm_dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("cannot run node")?;
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(docs.as_bytes())?;
    }
    if !child.wait()?.success() {
        bail!(
            "the ServiceMonitor in {} does not match its CRD schema",
            file.display()
        );
    }
    say(&format!(
        "{}: {passed} objects valid for Kubernetes {KUBERNETES_VERSION}, ServiceMonitor valid for its CRD",
        file.display()
    ));
    Ok(())
}

/// The dashboard: JSON, with every target's PromQL parsed by promtool (as recording rules,
/// the one offline parser it has).
fn dashboard(file: &Path, tools: &Path) -> anyhow::Result<()> {
    let dash: serde_json::Value = serde_json::from_str(&fs::read_to_string(file)?)
        .with_context(|| format!("{} is not JSON", file.display()))?;
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .context("the dashboard has no panels")?
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    if exprs.is_empty() {
        bail!("the dashboard has no queries");
    }
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        // Grafana's variables, as Grafana would fill them in.
        let e = e
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        rules += &format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(&e)?
        );
    }
    let rules_file = tools.join("dashboard-queries.yml");
    fs::write(&rules_file, rules)?;
    run_checked(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(&rules_file),
    )?;
    say(&format!(
        "{}: {} queries parse",
        file.display(),
        exprs.len()
    ));
    Ok(())
}
