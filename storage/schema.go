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

	// bucketServices is the root bucket holding one nested bucket per
	// service, keyed by naming.ServiceKey.String().
	bucketServices = []byte("services")
	// keyRevision, inside a service bucket, holds its revision (uint64).
	keyRevision = []byte("rev")
	// keyServiceMeta, inside a service bucket, holds its naming.ServiceMeta.
	keyServiceMeta = []byte("meta")
	// bucketInstances, inside a service bucket, holds its instances keyed
	// by naming.InstanceID.String().
	bucketInstances = []byte("instances")
)

// schemaVersion is the layout this code reads and writes.
const schemaVersion uint64 = 1

// rootBuckets are created by Open and required by Restore.
var rootBuckets = [][]byte{bucketMeta, bucketServices}
