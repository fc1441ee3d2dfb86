package redisstore

import "strings"

// slot returns the Redis Cluster hash slot of key: CRC16 (XMODEM:
// polynomial 0x1021, initial value 0) of the key, or of its hash tag (the
// part between the first '{' and the first '}' after it, when not empty),
// modulo 16384, as the Redis Cluster specification defines it.
func slot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := range len(key) {
		crc = crc<<8 ^ crcTable[byte(crc>>8)^key[i]]
	}
	return crc & (1<<14 - 1)
}

// crcTable holds CRC16-XMODEM of every byte value, for slot.
var crcTable = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()
