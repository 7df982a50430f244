// Package systemd is a thin layer over sd_notify and the watchdog, and
// holds the unit files.
package systemd
