// tlogcheck: an outside verifier of Cloister's transparency log, on Go's own
// golang.org/x/mod/sumdb/note (signed notes) and golang.org/x/mod/sumdb/tlog (RFC 6962 /
// 9162 trees, proofs, tiles). It reads a log published as static C2SP tlog-tiles (a
// folder), checks the checkpoint's signature by the verifier key given, recomputes the
// tree's root from the tiles, checks every entry's leaf hash, and checks the inclusion
// and consistency proofs in a JSON file. Prints one JSON object; exits 1 on any failure.
//
// Build (Debian's golang-go and golang-golang-x-mod-dev, no network):
//   GO111MODULE=off GOPATH=/usr/share/gocode go build -o tlogcheck main.go
package main

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type inclusion struct {
	Index int64    `json:"index"`
	Size  int64    `json:"size"`
	Leaf  string   `json:"leaf_hash"`
	Root  string   `json:"root"`
	Proof []string `json:"proof"`
}

type consistency struct {
	OldSize int64    `json:"old_size"`
	OldRoot string   `json:"old_root"`
	NewSize int64    `json:"new_size"`
	NewRoot string   `json:"new_root"`
	Proof   []string `json:"proof"`
}

type proofs struct {
	Inclusion   []inclusion   `json:"inclusion"`
	Consistency []consistency `json:"consistency"`
}

// dirTiles reads C2SP tiles from a folder: Go's sumdb paths carry the tile height
// ("tile/8/..."), C2SP's leave it out.
type dirTiles struct{ dir string }

func (d dirTiles) Height() int { return 8 }

func (d dirTiles) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		path := strings.Replace(t.Path(), "tile/8/", "tile/", 1)
		data, err := os.ReadFile(filepath.Join(d.dir, path))
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

func (d dirTiles) SaveTiles(tiles []tlog.Tile, data [][]byte) {}

func hashOf(text string) (tlog.Hash, error) {
	var h tlog.Hash
	raw, err := base64.StdEncoding.DecodeString(text)
	if err != nil || len(raw) != tlog.HashSize {
		return h, fmt.Errorf("bad hash %q", text)
	}
	copy(h[:], raw)
	return h, nil
}

func hashes(texts []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(texts))
	for i, t := range texts {
		h, err := hashOf(t)
		if err != nil {
			return nil, err
		}
		out[i] = h
	}
	return out, nil
}

func fail(format string, args ...interface{}) {
	msg, _ := json.Marshal(map[string]string{"error": fmt.Sprintf(format, args...)})
	fmt.Println(string(msg))
	os.Exit(1)
}

func entryPath(index int64, width int64) string {
	n := strconv.FormatInt(index, 10)
	for len(n)%3 != 0 {
		n = "0" + n
	}
	var parts []string
	for i := 0; i < len(n); i += 3 {
		if i+3 < len(n) {
			parts = append(parts, "x"+n[i:i+3])
		} else {
			parts = append(parts, n[i:i+3])
		}
	}
	p := "tile/entries/" + strings.Join(parts, "/")
	if width < 256 {
		p += ".p/" + strconv.FormatInt(width, 10)
	}
	return p
}

func main() {
	dir := flag.String("dir", "", "the log's static folder (checkpoint, tile/...)")
	vkey := flag.String("vkey", "", "the log's note verifier key")
	proofFile := flag.String("proofs", "", "a JSON file of inclusion and consistency proofs")
	flag.Parse()

	verifier, err := note.NewVerifier(*vkey)
	if err != nil {
		fail("verifier key: %v", err)
	}
	raw, err := os.ReadFile(filepath.Join(*dir, "checkpoint"))
	if err != nil {
		fail("checkpoint: %v", err)
	}
	n, err := note.Open(raw, note.VerifierList(verifier))
	if err != nil {
		fail("checkpoint signature: %v", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 {
		fail("checkpoint text: %q", n.Text)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("checkpoint size: %v", err)
	}
	root, err := hashOf(lines[2])
	if err != nil {
		fail("checkpoint root: %v", err)
	}
	tree := tlog.Tree{N: size, Hash: root}
	reader := tlog.TileHashReader(tree, dirTiles{*dir})
	computed, err := tlog.TreeHash(size, reader)
	if err != nil {
		fail("tree hash from tiles: %v", err)
	}
	if computed != root {
		fail("the tiles' root %v is not the checkpoint's %v", computed, root)
	}
	// every entry, from the entry bundles, against its leaf hash in the tiles
	var checked int64
	for start := int64(0); start < size; start += 256 {
		width := size - start
		if width > 256 {
			width = 256
		}
		bundle, err := os.ReadFile(filepath.Join(*dir, entryPath(start/256, width)))
		if err != nil {
			fail("entry bundle: %v", err)
		}
		for i := int64(0); i < width; i++ {
			if len(bundle) < 2 {
				fail("entry bundle %d truncated", start/256)
			}
			length := int(binary.BigEndian.Uint16(bundle))
			if len(bundle) < 2+length {
				fail("entry bundle %d truncated", start/256)
			}
			entry := bundle[2 : 2+length]
			bundle = bundle[2+length:]
			leaf, err := reader.ReadHashes([]int64{tlog.StoredHashIndex(0, start+i)})
			if err != nil {
				fail("leaf hash %d: %v", start+i, err)
			}
			if tlog.RecordHash(entry) != leaf[0] {
				fail("entry %d does not hash to its leaf", start+i)
			}
			checked++
		}
		if len(bundle) != 0 {
			fail("entry bundle %d has more than its entries", start/256)
		}
	}
	result := map[string]interface{}{
		"origin": lines[0], "size": size, "root": lines[2], "entries_checked": checked,
		"signer": n.Sigs[0].Name,
	}
	if *proofFile != "" {
		data, err := os.ReadFile(*proofFile)
		if err != nil {
			fail("proofs: %v", err)
		}
		var p proofs
		if err := json.Unmarshal(data, &p); err != nil {
			fail("proofs: %v", err)
		}
		for i, inc := range p.Inclusion {
			leaf, err1 := hashOf(inc.Leaf)
			th, err2 := hashOf(inc.Root)
			path, err3 := hashes(inc.Proof)
			if err1 != nil || err2 != nil || err3 != nil {
				fail("inclusion %d: malformed", i)
			}
			if err := tlog.CheckRecord(tlog.RecordProof(path), inc.Size, th, inc.Index, leaf); err != nil {
				fail("inclusion %d: %v", i, err)
			}
		}
		for i, c := range p.Consistency {
			oldRoot, err1 := hashOf(c.OldRoot)
			newRoot, err2 := hashOf(c.NewRoot)
			path, err3 := hashes(c.Proof)
			if err1 != nil || err2 != nil || err3 != nil {
				fail("consistency %d: malformed", i)
			}
			if err := tlog.CheckTree(tlog.TreeProof(path), c.NewSize, newRoot, c.OldSize, oldRoot); err != nil {
				fail("consistency %d: %v", i, err)
			}
		}
		result["inclusion_checked"] = len(p.Inclusion)
		result["consistency_checked"] = len(p.Consistency)
	}
	out, _ := json.Marshal(result)
	fmt.Println(string(out))
}
