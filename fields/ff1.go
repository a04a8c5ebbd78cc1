package fields

import (
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"math/big"
	"math/bits"
	"slices"
)

// ff1 is FF1 from NIST SP 800-38G (format-preserving encryption, a Feistel
// network of ten rounds over AES), for radix 2 to 256. Numerals are bytes
// holding values below the radix.
type ff1 struct {
	block   cipher.Block
	radix   int
	noSmall bool // tests: always take the big.Int path
}

var errFF1 = errors.New("ff1: invalid input")

// newFF1 returns FF1 over an AES block cipher.
func newFF1(block cipher.Block, radix int) (*ff1, error) {
	if block.BlockSize() != 16 || radix < 2 || radix > 256 {
		return nil, errFF1
	}
	return &ff1{block: block, radix: radix}, nil
}

// minLen returns the shortest numeral string FF1 accepts for the radix:
// radix^minlen >= 1,000,000 (and minlen >= 2).
func (f *ff1) minLen() int {
	n, v := 0, 1
	for v < 1_000_000 {
		v *= f.radix
		n++
	}
	return max(n, 2)
}

func (f *ff1) encrypt(tweak, x []byte) ([]byte, error) { return f.cipher(tweak, x, true) }
func (f *ff1) decrypt(tweak, x []byte) ([]byte, error) { return f.cipher(tweak, x, false) }

func (f *ff1) cipher(tweak, x []byte, enc bool) ([]byte, error) {
	out, _, err := f.appendCipher(nil, nil, tweak, x, enc)
	return out, err
}

// smallPow returns radix^v when it is at most 2^32 (the case cipherSmall
// handles), else ok false.
func smallPow(radix, v int) (uint64, bool) {
	r := uint64(1)
	for range v {
		r *= uint64(radix)
		if r > 1<<32 {
			return 0, false
		}
	}
	return r, true
}

// appendPQ appends P || T || 0^pad || [round] || [NUM]^b, with the round
// and NUM left zero, and returns where the round byte is.
func (f *ff1) appendPQ(dst, tweak []byte, n, u, b int) ([]byte, int) {
	t := len(tweak)
	pad := (((-t - b - 1) % 16) + 16) % 16
	dst = slices.Grow(dst[:0], 16+t+pad+1+b)
	dst = append(dst, 1, 2, 1, byte(f.radix>>16), byte(f.radix>>8), byte(f.radix), 10, byte(u))
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	dst = binary.BigEndian.AppendUint32(dst, uint32(t))
	dst = append(dst, tweak...)
	for range pad {
		dst = append(dst, 0)
	}
	roundAt := len(dst)
	for range 1 + b {
		dst = append(dst, 0)
	}
	return dst, roundAt
}

// appendCipher enciphers (or deciphers) x and appends the result to dst;
// scratch is reused for the PRF input and returned, grown if need be.
func (f *ff1) appendCipher(dst, scratch, tweak, x []byte, enc bool) (out, scr []byte, err error) {
	n := len(x)
	if n < f.minLen() || n > 1<<20 || len(tweak) > 1<<20 {
		return dst, scratch, errFF1
	}
	for _, d := range x {
		if int(d) >= f.radix {
			return dst, scratch, errFF1
		}
	}
	u := n / 2
	v := n - u
	if rv, ok := smallPow(f.radix, v); ok && !f.noSmall {
		// radix^v - 1 fits in 4 bytes: b <= 4, d = 8.
		b := (bits.Len64(rv-1) + 7) / 8
		pq, roundAt := f.appendPQ(scratch, tweak, n, u, b)
		return f.cipherSmall(dst, pq, roundAt, roundAt+1, b, x, u, v, enc), pq, nil
	}
	out, err = f.cipherBig(tweak, x, u, v, enc)
	return append(dst, out...), scratch, err
}

// cipherBig is FF1 with big.Int arithmetic, for any size.
func (f *ff1) cipherBig(tweak, x []byte, u, v int, enc bool) ([]byte, error) {
	n := len(x)
	radix := big.NewInt(int64(f.radix))
	// b = ceil(ceil(v * log2(radix)) / 8) bytes, exactly: the bytes of radix^v - 1.
	var rv, ru, tmp big.Int
	rv.Exp(radix, big.NewInt(int64(v)), nil)
	ru.Exp(radix, big.NewInt(int64(u)), nil)
	b := (tmp.Sub(&rv, big.NewInt(1)).BitLen() + 7) / 8
	d := 4*((b+3)/4) + 4
	pq, roundAt := f.appendPQ(nil, tweak, n, u, b)
	numAt := roundAt + 1

	a := append([]byte(nil), x[:u]...)
	bb := append([]byte(nil), x[u:]...)
	if !enc {
		a, bb = bb, a // work on (B, A) so the loop below mirrors encryption
	}
	var numB, numA, y, c, mod big.Int
	s := make([]byte, (d+15)/16*16)
	var r, blk [16]byte
	for k := range 10 {
		i := k
		if !enc {
			i = 9 - k
		}
		// Q = T || 0^pad || [i] || [NUM(B)]^b, where B is the half that
		// feeds the round (A when decrypting).
		pq[roundAt] = byte(i)
		f.num(&numB, bb)
		nb := numB.Bytes()
		clear(pq[numAt:])
		copy(pq[numAt+b-len(nb):], nb)
		// R = PRF(P || Q): CBC-MAC with a zero IV.
		clear(r[:])
		for off := 0; off < len(pq); off += 16 {
			subtle.XORBytes(r[:], r[:], pq[off:off+16])
			f.block.Encrypt(r[:], r[:])
		}
		copy(s, r[:])
		for j := 1; j*16 < d; j++ {
			blk = r
			binary.BigEndian.PutUint64(blk[8:], binary.BigEndian.Uint64(r[8:])^uint64(j))
			f.block.Encrypt(s[j*16:], blk[:])
		}
		y.SetBytes(s[:d])
		m := &rv
		mlen := v
		if i%2 == 0 {
			m, mlen = &ru, u
		}
		f.num(&numA, a)
		if enc {
			c.Add(&numA, &y)
		} else {
			c.Sub(&numA, &y)
		}
		mod.Mod(&c, m)
		next := f.str(mod.Bytes(), mlen)
		a, bb = bb, next
	}
	if !enc {
		a, bb = bb, a
	}
	return append(a, bb...), nil
}

// num sets z to the numeral string x read in f's radix, most significant first.
func (f *ff1) num(z *big.Int, x []byte) {
	// Digits in chunks that fit a uint64 keep big.Int work small.
	z.SetInt64(0)
	var chunk big.Int
	var mul big.Int
	step := 1
	lim := uint64(f.radix)
	for lim <= (1<<63)/uint64(f.radix) {
		lim *= uint64(f.radix)
		step++
	}
	for i := 0; i < len(x); i += step {
		end := min(i+step, len(x))
		var acc, scale uint64 = 0, 1
		for _, dg := range x[i:end] {
			acc = acc*uint64(f.radix) + uint64(dg)
			scale *= uint64(f.radix)
		}
		mul.SetUint64(scale)
		z.Mul(z, &mul)
		chunk.SetUint64(acc)
		z.Add(z, &chunk)
	}
}

// str returns the m-numeral string of the big-endian integer be in f's radix.
func (f *ff1) str(be []byte, m int) []byte {
	var z, q, r, rad big.Int
	z.SetBytes(be)
	rad.SetInt64(int64(f.radix))
	out := make([]byte, m)
	for i := m - 1; i >= 0; i-- {
		if z.Sign() == 0 {
			break
		}
		q.QuoRem(&z, &rad, &r)
		out[i] = byte(r.Int64())
		z.Set(&q)
	}
	return out
}

// cipherSmall is cipher for radix^v <= 2^32 (b <= 4, d = 8): y fits in a
// uint64 and every sum below in 33 bits, so no big.Int is needed. Every
// block of P || Q but the last is the same in all rounds (the round number
// and NUM(B) sit in the last one), so the CBC-MAC of those blocks is
// computed once. It appends the result numerals to dst.
func (f *ff1) cipherSmall(dst, pq []byte, roundAt, numAt, b int, x []byte, u, v int, enc bool) []byte {
	radix := uint64(f.radix)
	pow := func(k int) uint64 {
		r := uint64(1)
		for range k {
			r *= radix
		}
		return r
	}
	num := func(x []byte) uint64 {
		var z uint64
		for _, d := range x {
			z = z*radix + uint64(d)
		}
		return z
	}
	ru, rv := pow(u), pow(v)
	na, nb := num(x[:u]), num(x[u:])
	if !enc {
		na, nb = nb, na
	}
	var head [16]byte
	last := len(pq) - 16
	for off := 0; off < last; off += 16 {
		subtle.XORBytes(head[:], head[:], pq[off:off+16])
		f.block.Encrypt(head[:], head[:])
	}
	var r [16]byte
	var nbuf [8]byte
	for k := range 10 {
		i := k
		if !enc {
			i = 9 - k
		}
		pq[roundAt] = byte(i)
		binary.BigEndian.PutUint64(nbuf[:], nb)
		copy(pq[numAt:], nbuf[8-b:])
		subtle.XORBytes(r[:], head[:], pq[last:])
		f.block.Encrypt(r[:], r[:])
		y := binary.BigEndian.Uint64(r[:8])
		m := rv
		if i%2 == 0 {
			m = ru
		}
		y %= m
		var c uint64
		if enc {
			c = (na + y) % m
		} else {
			c = (na + m - y) % m
		}
		na, nb = nb, c
	}
	if !enc {
		na, nb = nb, na
	}
	at := len(dst)
	dst = slices.Grow(dst, u+v)[:at+u+v]
	out := dst[at:]
	for i := u - 1; i >= 0; i-- {
		out[i] = byte(na % radix)
		na /= radix
	}
	for i := u + v - 1; i >= u; i-- {
		out[i] = byte(nb % radix)
		nb /= radix
	}
	return dst
}
