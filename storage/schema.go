package storage

// Every bucket name and well-known key of the database. No other file spells
// them out.
var (
	// bucketMeta is the root bucket for database-wide values.
	bucketMeta = []byte("regent_meta")
	// keySchemaVersion holds the layout version, one uint64.
	keySchemaVersion = []byte("schema_version")
	// keyAppliedIndex holds the last applied raft index, one uint64.
	keyAppliedIndex = []byte("applied_index")

	// bucketRevisions holds one key per service ever written
	// (naming.ServiceKey.String()) whose value is its revision (uint64).
	bucketRevisions = []byte("service_rev")
	// bucketServiceMeta holds each service's naming.ServiceMeta, keyed as
	// bucketRevisions.
	bucketServiceMeta = []byte("service_meta")
	// bucketInstances holds every instance of every service, keyed by the
	// service key string, a 0 byte, and naming.InstanceID.String(), so
	// that one service's instances are adjacent.
	bucketInstances = []byte("instances")
)

// schemaVersion is the layout this code reads and writes. Version 1 (one
// nested bucket per service, see migrate.go) is migrated when opened.
const schemaVersion uint64 = 2

// rootBuckets are created by Open and required by Restore.
var rootBuckets = [][]byte{bucketMeta, bucketRevisions, bucketServiceMeta, bucketInstances}
