//! nginx as the reference reverse proxy: one worker, keep-alive
//! connections to the upstream, no access log.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::proc::{self, Core, Placement, Proc};

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    proc: Proc,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Nginx {
    /// Starts nginx on `core`, proxying `/up/` to `upstream`.
    pub fn start(
        binary: &Path,
        placement: &Placement,
        core: Core,
        dir: &Path,
        upstream: SocketAddr,
    ) -> anyhow::Result<Self> {
        let dir = dir.join("nginx");
        std::fs::create_dir_all(dir.join("tmp"))?;
        let port = proc::free_port()?;
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\n\
             daemon off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log crit;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/tmp/body;\n\
               proxy_temp_path {d}/tmp/proxy;\n\
               fastcgi_temp_path {d}/tmp/fastcgi;\n\
               uwsgi_temp_path {d}/tmp/uwsgi;\n\
               scgi_temp_path {d}/tmp/scgi;\n\
               upstream backend {{ server {upstream}; keepalive 64; }}\n\
               server {{\n\
                 listen 127.0.0.1:{port} backlog=4096;\n\
                 location /up/ {{\n\
                   proxy_pass http://backend/;\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n\
                 }}\n\
               }}\n\
             }}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let mut command = placement.command(binary, core);
        command.arg("-p").arg(&dir).arg("-c").arg(&path);
        let proc = Proc::spawn("nginx", command, None, Stdio::null())?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        proc::wait_listening(addr, Duration::from_secs(10))?;
        Ok(Self { proc, addr })
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        let master = self.proc.pid();
        let mut pids = vec![master];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if parent(pid) == Some(master) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Stops nginx.
    pub fn stop(mut self) {
        self.proc.stop(Duration::from_secs(3));
    }
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}
