//! Notifications to systemd for `Type=notify` units (sd_notify(3), through
//! the `sd-notify` crate): `READY=1` once the data plane is attached (or
//! adopted), its maps are filled and the API serves; `RELOADING=1` while a
//! configuration is read and applied, then `READY=1` again; `STOPPING=1` on
//! shutdown. Each does nothing outside systemd (no `NOTIFY_SOCKET`), and a
//! failure to notify is logged, never fatal.

use log::debug;
use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("sd_notify {states:?}: {e}");
    }
}

/// `READY=1` with `status` as the unit's status line (`systemctl status`).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` with the monotonic time systemd asks it to carry.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}
