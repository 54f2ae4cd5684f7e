//! `wasmgrid tls generate`: a private CA and one certificate for a grid's
//! host names, for clusters on a private network (compose, a lab) and for
//! `wasmgrid dev --tls`. A grid facing the public uses certificates from
//! its own CA or ACME instead (docs/security.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum TlsCommand {
    /// Make a CA and a certificate for NAMES (host names, IP addresses) in
    /// DIR: ca.pem, cert.pem, key.pem (mode 0600). Kept when DIR already
    /// has all three, so it is safe to run at every start.
    Generate {
        /// Where the files go (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// The names the certificate is valid for: every host name or
        /// address that clients and other replicas use.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// The files of a generated certificate.
pub struct Generated {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn tls(command: TlsCommand) -> Result<()> {
    match command {
        TlsCommand::Generate { dir, names } => {
            let (made, files) = generate(&dir, &names)?;
            let verb = if made { "made" } else { "kept the existing" };
            println!(
                "{verb} CA {}, certificate {} and key {}",
                files.ca.display(),
                files.cert.display(),
                files.key.display()
            );
        }
    }
    Ok(())
}

/// Makes a CA and a certificate for `names` in `dir`, unless all three
/// files are there already (then `false` and the existing files).
pub fn generate(dir: &Path, names: &[String]) -> Result<(bool, Generated)> {
    let files = Generated { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    if files.ca.exists() && files.cert.exists() && files.key.exists() {
        return Ok((false, files));
    }
    anyhow::ensure!(!names.is_empty(), "name at least one host name or address for the certificate");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "wasmgrid CA");
    let ca = ca.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut leaf = rcgen::CertificateParams::new(names.to_vec()).context("a name is not a valid host name")?;
    leaf.distinguished_name.push(rcgen::DnType::CommonName, names[0].as_str());
    let leaf = leaf.signed_by(&key, &ca, &ca_key)?;
    // The key first: a certificate without its key is never left behind.
    write(&files.key, key.serialize_pem(), 0o600)?;
    write(&files.cert, leaf.pem(), 0o644)?;
    write(&files.ca, ca.pem(), 0o644)?;
    Ok((true, files))
}

fn write(path: &Path, text: String, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}
