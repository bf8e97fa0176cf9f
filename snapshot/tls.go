package snapshot

import (
	"crypto/x509"
	"fmt"
	"os"
)

// LoadCAFile reads a PEM file of certificate authorities for a component's
// --*-tls-ca-file flag (DocumentDB's global-bundle.pem, Memorystore's server
// CA). A file without any certificate is an error.
func LoadCAFile(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("TLS CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("TLS CA file %s holds no PEM certificate", path)
	}
	return pool, nil
}
