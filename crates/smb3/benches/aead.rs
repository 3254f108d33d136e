//! `cargo bench -p smb3 --bench aead`: the AES-GCM implementations in the dependency tree, in isolation, on
//! 1 MiB messages (an SMB READ response's size): RustCrypto's aes-gcm, ring's, and the `Sealer` the client
//! uses (which should match the faster one), next to RustCrypto's AES-CCM. Prints MiB/s per core and the CPU
//! features the process sees (RustCrypto and ring both detect AES-NI and carry-less multiply at run time).

use std::time::Instant;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use smb3::crypto::Sealer;
use smb3::wire::CipherId;

const MESSAGE: usize = 1 << 20;

/// MiB/s of `f` run over one MESSAGE-sized buffer until about `secs` have passed.
fn rate(secs: f64, mut f: impl FnMut(&mut [u8])) -> f64 {
    let mut buf = vec![0x5Au8; MESSAGE];
    f(&mut buf);
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        f(&mut buf);
        n += 1;
    }
    n as f64 * MESSAGE as f64 / (1 << 20) as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("aead: a benchmark; run it with `cargo bench -p smb3 --bench aead`");
        return;
    }
    #[cfg(target_arch = "x86_64")]
    println!(
        "cpu features: aes {} pclmulqdq {} avx {} avx2 {}",
        std::arch::is_x86_feature_detected!("aes"),
        std::arch::is_x86_feature_detected!("pclmulqdq"),
        std::arch::is_x86_feature_detected!("avx"),
        std::arch::is_x86_feature_detected!("avx2"),
    );
    let key = [0x42u8; 16];
    let aad = [0u8; 32];
    let secs = 1.0;

    let rc = Aes128Gcm::new_from_slice(&key).unwrap();
    let nonce = Nonce::from_slice(&[7u8; 12]);
    let rc_seal = rate(secs, |b| {
        rc.encrypt_in_place_detached(nonce, &aad, b).unwrap();
    });
    let sealed = {
        let mut b = vec![0x5Au8; MESSAGE];
        let tag = rc.encrypt_in_place_detached(nonce, &aad, &mut b).unwrap();
        (b, tag)
    };
    let rc_open = rate(secs, |b| {
        b.copy_from_slice(&sealed.0);
        rc.decrypt_in_place_detached(nonce, &aad, b, &sealed.1).unwrap();
    });

    let rk = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &key).unwrap());
    let rn = || ring::aead::Nonce::assume_unique_for_key([7u8; 12]);
    let ring_seal = rate(secs, |b| {
        let _tag = rk.seal_in_place_separate_tag(rn(), ring::aead::Aad::from(&aad), b).unwrap();
    });
    let ring_open = rate(secs, |b| {
        b.copy_from_slice(&sealed.0);
        let tag = ring::aead::Tag::try_from(&sealed.1[..]).unwrap();
        rk.open_in_place_separate_tag(rn(), ring::aead::Aad::from(&aad), tag, b, 0..).unwrap();
    });

    let sealer_rate = |cipher: CipherId, len: usize| {
        let (ours, theirs) = (
            Sealer::new(cipher, &vec![1; len], &vec![2; len]).unwrap(),
            Sealer::new(cipher, &vec![2; len], &vec![1; len]).unwrap(),
        );
        let message = vec![0x5Au8; MESSAGE];
        let frame = theirs.encrypt(1, &message);
        let seal = rate(secs, |b| {
            ours.seal_in_place(1, b);
        });
        let mut work = frame.clone();
        let open = rate(secs, |_| {
            work.copy_from_slice(&frame);
            ours.decrypt_in_place(&mut work).unwrap();
        });
        (seal, open)
    };
    let (gcm_seal, gcm_open) = sealer_rate(CipherId::Aes128Gcm, 16);
    let (ccm_seal, ccm_open) = sealer_rate(CipherId::Aes128Ccm, 16);

    println!("1 MiB messages, one core, MiB/s (open includes a 1 MiB copy to restore the ciphertext)");
    println!("| implementation | seal | open |");
    println!("|---|---|---|");
    println!("| RustCrypto aes-gcm 0.10, AES-128-GCM | {rc_seal:.0} | {rc_open:.0} |");
    println!("| ring 0.17, AES-128-GCM | {ring_seal:.0} | {ring_open:.0} |");
    println!("| smb3 Sealer, AES-128-GCM | {gcm_seal:.0} | {gcm_open:.0} |");
    println!("| smb3 Sealer, AES-128-CCM (RustCrypto) | {ccm_seal:.0} | {ccm_open:.0} |");
}
