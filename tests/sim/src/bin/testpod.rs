//! A tiny program to run as a pod image in tailor-sim's tests: `serve PORT` answers HTTP on the
//! pod IP, `exit CODE MESSAGE` writes a termination message and exits, `cat PATH...` prints files.

use std::io::{Read, Write};

fn serve(port: &str) -> std::io::Result<()> {
    let ip = std::env::var("POD_IP").unwrap_or_else(|_| "0.0.0.0".into());
    let listener = std::net::TcpListener::bind(format!("{ip}:{port}"))?;
    println!("listening on {ip}:{port}");
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        // Read the whole request head: it may arrive in several segments.
        let mut data = Vec::new();
        let mut buf = [0u8; 2048];
        while !data.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
        }
        let req = String::from_utf8_lossy(&data);
        let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
        let body = format!("hello from {host} path {path}\n");
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {
            if let Err(e) = serve(args.get(1).map(String::as_str).unwrap_or("8080")) {
                eprintln!("serve: {e}");
                std::process::exit(1);
            }
        }
        Some("exit") => {
            let code: i32 = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(0);
            let msg = args.get(2).cloned().unwrap_or_default();
            for k in [
                "NVIDIA_VISIBLE_DEVICES",
                "POD_NAME",
                "POD_NAMESPACE",
                "POD_IP",
                "GREETING",
                "PASSWORD",
            ] {
                println!("{k}={}", std::env::var(k).unwrap_or_default());
            }
            if let Err(e) = std::fs::write("/dev/termination-log", &msg) {
                eprintln!("termination-log: {e}");
            }
            std::process::exit(code);
        }
        Some("cat") => {
            for p in &args[1..] {
                match std::fs::read_to_string(p) {
                    Ok(s) => println!("{p}: {}", s.trim()),
                    Err(e) => println!("{p}: error {e}"),
                }
            }
        }
        _ => {
            eprintln!("usage: tailor-sim-testpod serve PORT | exit CODE MESSAGE | cat PATH...");
            std::process::exit(2);
        }
    }
}
