package mongo

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// Flavor is the kind of server a snapshot is restored into. It decides which
// collection options and indexes the restore keeps, adapts or skips (see
// Compatibility).
type Flavor string

// Flavors.
const (
	FlavorMongoDB    Flavor = "mongodb"    // MongoDB Community or Enterprise
	FlavorAtlas      Flavor = "atlas"      // MongoDB Atlas
	FlavorDocumentDB Flavor = "documentdb" // Amazon DocumentDB
	FlavorFerretDB   Flavor = "ferretdb"   // FerretDB
)

// Flavors lists the flavors ParseFlavor accepts.
var Flavors = []Flavor{FlavorMongoDB, FlavorAtlas, FlavorDocumentDB, FlavorFerretDB}

// ParseFlavor returns the flavor named s (case-insensitive). The empty
// string gives the empty flavor, which means "detect it".
func ParseFlavor(s string) (Flavor, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return "", nil
	}
	for _, f := range Flavors {
		if string(f) == s {
			return f, nil
		}
	}
	names := make([]string, len(Flavors))
	for i, f := range Flavors {
		names[i] = string(f)
	}
	return "", fmt.Errorf("mongo: unknown flavor %q (want one of %s)", s, strings.Join(names, ", "))
}

// Host names of managed services, as MongoDB's own tools recognise them
// (mongodb-js/mongodb-build-info, used by mongosh and Compass):
// Atlas clusters are *.mongodb.net, DocumentDB clusters
// *.docdb.amazonaws.com and elastic clusters *.docdb-elastic.amazonaws.com
// (also in the China regions, *.amazonaws.com.cn).
var (
	atlasHost      = regexp.MustCompile(`(?i)\.mongodb(-dev|-qa|-stage)?\.net\.?$`)
	documentDBHost = regexp.MustCompile(`(?i)docdb(-elastic)?\.amazonaws\.com(\.cn)?\.?$`)
)

// DetectFlavor asks the server behind client (reached with uri) what it is:
// FerretDB says so in buildInfo (ferretdbVersion in 1.x, ferretdb in 2.x),
// DocumentDB and Atlas are recognised by their host names, in the URI or in
// hello's host list (a DocumentDB cluster reached through a tunnel still
// lists its own names). The version is buildInfo's (FerretDB's own version
// for FerretDB, which reports a MongoDB version too).
func DetectFlavor(ctx context.Context, client *mongo.Client, uri string) (Flavor, string, error) {
	admin := client.Database("admin")
	var hello, info bson.Raw
	if err := admin.RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Decode(&hello); err != nil {
		return "", "", fmt.Errorf("mongo: hello: %s", serverMessage(err))
	}
	if err := admin.RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&info); err != nil {
		return "", "", fmt.Errorf("mongo: buildInfo: %s", serverMessage(err))
	}
	f, v := classifyFlavor(uri, hello, info)
	return f, v, nil
}

// classifyFlavor returns the flavor and version of a server from its URI
// and its answers to hello and buildInfo (either may be nil).
func classifyFlavor(uri string, hello, buildInfo bson.Raw) (Flavor, string) {
	version, _ := lookupString(buildInfo, "version")
	for _, key := range []string{"ferretdbVersion", "ferretdb"} {
		v := buildInfo.Lookup(key)
		if v.Type == 0 {
			continue
		}
		if s, ok := v.StringValueOK(); ok {
			return FlavorFerretDB, s
		}
		if s, ok := lookupString(v.Document(), "version"); ok {
			return FlavorFerretDB, s
		}
		return FlavorFerretDB, ""
	}
	hosts := uriHosts(uri)
	for _, key := range []string{"hosts", "passives", "arbiters"} {
		if arr, ok := hello.Lookup(key).ArrayOK(); ok {
			vals, _ := arr.Values()
			for _, v := range vals {
				if s, ok := v.StringValueOK(); ok {
					hosts = append(hosts, hostName(s))
				}
			}
		}
	}
	for _, key := range []string{"me", "primary"} {
		if s, ok := lookupString(hello, key); ok {
			hosts = append(hosts, hostName(s))
		}
	}
	for _, h := range hosts {
		if documentDBHost.MatchString(h) {
			return FlavorDocumentDB, version
		}
	}
	for _, h := range hosts {
		if atlasHost.MatchString(h) {
			return FlavorAtlas, version
		}
	}
	return FlavorMongoDB, version
}

func lookupString(doc bson.Raw, key string) (string, bool) {
	if len(doc) == 0 {
		return "", false
	}
	return doc.Lookup(key).StringValueOK()
}

// uriHosts returns the host names of a connection string (for
// mongodb+srv://, the SRV name), without ports and without resolving
// anything.
func uriHosts(uri string) []string {
	_, rest, ok := strings.Cut(uri, "://")
	if !ok {
		return nil
	}
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		rest = rest[:i]
	}
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		rest = rest[at+1:]
	}
	var out []string
	for _, h := range strings.Split(rest, ",") {
		if h != "" {
			out = append(out, hostName(h))
		}
	}
	return out
}

// hostName strips the port (and IPv6 brackets) from host:port.
func hostName(host string) string {
	if strings.HasPrefix(host, "[") {
		h, _, _ := strings.Cut(host[1:], "]")
		return h
	}
	h, _, _ := strings.Cut(host, ":")
	return h
}

// retryWritesOff returns uri with retryWrites=false added, unless it sets
// retryWrites already. DocumentDB refuses retryable writes, which the
// driver uses by default.
func retryWritesOff(uri string) (string, bool) {
	if strings.Contains(strings.ToLower(uri), "retrywrites=") {
		return uri, false
	}
	scheme, rest, ok := strings.Cut(uri, "://")
	if !ok {
		return uri, false
	}
	switch i := strings.IndexAny(rest, "/?"); {
	case i < 0:
		rest += "/?retryWrites=false"
	case rest[i] == '?':
		rest = rest[:i] + "/" + rest[i:] + "&retryWrites=false"
	case strings.Contains(rest[i:], "?"):
		rest += "&retryWrites=false"
	default:
		rest += "?retryWrites=false"
	}
	return scheme + "://" + rest, true
}

// A serverVersion is the major and minor number of a version string such as
// "5.0.0" or "v1.24.2"; known is false when the string does not parse.
type serverVersion struct {
	major, minor int
	known        bool
}

func parseVersion(s string) serverVersion {
	s = strings.TrimPrefix(strings.TrimSpace(s), "v")
	parts := strings.SplitN(s, ".", 3)
	if len(parts) < 2 {
		return serverVersion{}
	}
	major, err1 := strconv.Atoi(parts[0])
	minorStr := parts[1]
	if i := strings.IndexFunc(minorStr, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minorStr = minorStr[:i]
	}
	minor, err2 := strconv.Atoi(minorStr)
	if err := errors.Join(err1, err2); err != nil {
		return serverVersion{}
	}
	return serverVersion{major, minor, true}
}

// atLeast reports whether v is at least major.minor; an unknown version is
// taken as at least anything when unknownIsNew, else as older than
// anything.
func (v serverVersion) atLeast(major, minor int, unknownIsNew bool) bool {
	if !v.known {
		return unknownIsNew
	}
	return v.major > major || v.major == major && v.minor >= minor
}
