package storage

// Retryable exports retryable for tests.
var Retryable = retryable
