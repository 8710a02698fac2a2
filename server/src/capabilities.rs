//! Capabilities at start: the Docker image grants the binary *permitted*
//! file capabilities only, and the binary raises them itself.

/// Raises every capability in the permitted set into the effective set.
///
/// The Docker image gives the binary *permitted* file capabilities (BPF,
/// NET_ADMIN, DAC_OVERRIDE) without the effective bit: with the bit, exec
/// would fail outright in a container started without those capabilities;
/// without it, the binary starts either way and takes what it was granted
/// here. Outside such a setup this is a no-op.
pub fn raise_permitted_capabilities() {
    let Ok(permitted) = caps::read(None, caps::CapSet::Permitted) else {
        return;
    };
    for capability in permitted {
        if let Err(error) = caps::raise(None, caps::CapSet::Effective, capability) {
            log::debug!("cannot raise {capability}: {error}");
        }
    }
}
