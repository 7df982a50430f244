// Package render reads and writes the Nix machines file: the 8-field model
// ([Machine]), a parser that accepts what Nix accepts, a formatter that
// writes only what Nix reads back to the same values, validation that makes
// it impossible for an advert to inject a line, [Merge] of static and
// discovered builders, and crash-safe [WriteAtomic].
package render
