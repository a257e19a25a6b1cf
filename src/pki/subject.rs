//! Subjects with several organizations.
//!
//! Kubernetes maps each `O=` of a client certificate to a group, so a user in
//! two groups needs two `O` attributes. rcgen's `DistinguishedName` holds one
//! value per attribute type, so for that case the certificate rcgen produced
//! gets its subject replaced by one encoded here and is signed again with
//! the CA key. The DER handled is only what rcgen itself just emitted.

use rcgen::{KeyPair, SigningKey};

const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_OID: u8 = 0x06;
const TAG_UTF8: u8 = 0x0c;
const TAG_BIT_STRING: u8 = 0x03;
/// id-at-commonName 2.5.4.3 and id-at-organizationName 2.5.4.10.
const OID_CN: [u8; 3] = [0x55, 0x04, 0x03];
const OID_O: [u8; 3] = [0x55, 0x04, 0x0a];
/// Index of `subject` among the TBSCertificate fields (version, serial,
/// signature, issuer, validity, subject, ...); rcgen always writes v3.
const SUBJECT_INDEX: usize = 5;

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    push_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// Why a certificate's subject could not be replaced.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DerError {
    #[error("truncated DER")]
    Truncated,
    #[error("unsupported DER length")]
    UnsupportedLength,
    #[error("{0} is not a SEQUENCE")]
    NotSequence(&'static str),
    #[error("tbsCertificate has no subject")]
    NoSubject,
    #[error("cannot sign the new tbsCertificate")]
    Sign(#[source] rcgen::Error),
}

/// Reads one TLV at the start of `buf`: (tag, header length, content length).
fn read_tlv(buf: &[u8]) -> Result<(u8, usize, usize), DerError> {
    let short = || DerError::Truncated;
    let tag = *buf.first().ok_or_else(short)?;
    let first = *buf.get(1).ok_or_else(short)?;
    let (header, len) = if first < 0x80 {
        (2, first as usize)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return Err(DerError::UnsupportedLength);
        }
        let bytes = buf.get(2..2 + n).ok_or_else(short)?;
        (
            2 + n,
            bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize),
        )
    };
    if buf.len() < header + len {
        return Err(short());
    }
    Ok((tag, header, len))
}

fn attribute(oid: &[u8], value: &str) -> Vec<u8> {
    let mut atv = tlv(TAG_OID, oid);
    atv.extend(tlv(TAG_UTF8, value.as_bytes()));
    tlv(TAG_SET, &tlv(TAG_SEQUENCE, &atv))
}

/// DER Name `O=<org1>, O=<org2>, ..., CN=<cn>` (Go's order).
pub(crate) fn encode_name(common_name: &str, organizations: &[String]) -> Vec<u8> {
    let mut rdns = Vec::new();
    for org in organizations {
        rdns.extend(attribute(&OID_O, org));
    }
    rdns.extend(attribute(&OID_CN, common_name));
    tlv(TAG_SEQUENCE, &rdns)
}

/// Replaces the subject of `cert_der` with `subject_der` and re-signs it
/// with `signer` (the issuing CA's key, same algorithm as before).
pub(crate) fn replace_subject(
    cert_der: &[u8],
    subject_der: &[u8],
    signer: &KeyPair,
) -> Result<Vec<u8>, DerError> {
    let (tag, h, len) = read_tlv(cert_der)?;
    if tag != TAG_SEQUENCE {
        return Err(DerError::NotSequence("certificate"));
    }
    let outer = &cert_der[h..h + len];
    let (tag, tbs_h, tbs_len) = read_tlv(outer)?;
    if tag != TAG_SEQUENCE {
        return Err(DerError::NotSequence("tbsCertificate"));
    }
    let tbs = &outer[tbs_h..tbs_h + tbs_len];
    let rest = &outer[tbs_h + tbs_len..];
    let (_, alg_h, alg_len) = read_tlv(rest)?;
    let sig_alg = &rest[..alg_h + alg_len];

    let mut new_tbs_content = Vec::with_capacity(tbs.len() + subject_der.len());
    let mut pos = 0;
    let mut index = 0;
    while pos < tbs.len() {
        let (_, fh, flen) = read_tlv(&tbs[pos..])?;
        let field = &tbs[pos..pos + fh + flen];
        if index == SUBJECT_INDEX {
            new_tbs_content.extend_from_slice(subject_der);
        } else {
            new_tbs_content.extend_from_slice(field);
        }
        pos += fh + flen;
        index += 1;
    }
    if index <= SUBJECT_INDEX {
        return Err(DerError::NoSubject);
    }
    let new_tbs = tlv(TAG_SEQUENCE, &new_tbs_content);
    let signature = signer.sign(&new_tbs).map_err(DerError::Sign)?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend(signature);
    let mut body = new_tbs;
    body.extend_from_slice(sig_alg);
    body.extend(tlv(TAG_BIT_STRING, &bits));
    Ok(tlv(TAG_SEQUENCE, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_encode_in_short_and_long_form() {
        let mut v = Vec::new();
        push_len(&mut v, 5);
        push_len(&mut v, 200);
        push_len(&mut v, 0x1234);
        assert_eq!(v, vec![5, 0x81, 200, 0x82, 0x12, 0x34]);
        let t = tlv(0x04, &[0u8; 300]);
        assert_eq!(read_tlv(&t).unwrap(), (0x04, 4, 300));
    }
}
