package snapshot

import "errors"

// Sentinel errors. Callers test them with errors.Is; only package main turns
// them into exit codes.
var (
	// ErrCorrupt marks stored data that is damaged or missing: a checksum
	// or size mismatch, an object that cannot be decoded, an object the
	// manifest names that is not in the repository.
	ErrCorrupt = errors.New("corrupt or missing data")

	// ErrNotFound marks a snapshot ID that has no manifest in the repository.
	ErrNotFound = errors.New("snapshot not found")

	// ErrUnsafePath marks an archive entry that would write outside the
	// restore target (absolute or ../ paths, writes through symlinks,
	// device files).
	ErrUnsafePath = errors.New("unsafe path in archive")

	// ErrDiffers marks a target whose data differs from the snapshot's (or
	// the source's) when they are compared after a restore.
	ErrDiffers = errors.New("the target differs from the snapshot")

	// ErrTargetNotEmpty marks a restore target that already holds data.
	ErrTargetNotEmpty = errors.New("target is not empty")
)
