package protocol

// Fits says whether b is small enough for one message: its body within the
// envelope's 16-bit length. A forwarder with more to say for one partition
// in one tick splits the calls over several batches (README 7.3), each
// with its own sequence and the tick's `at`.
func (b *MetadataBatch) Fits() bool {
	return b.MarshalSize()-clusterMsgOverhead <= clusterMaxBody
}
