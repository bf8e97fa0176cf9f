package postgres

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"regexp"
	"slices"
	"strings"
)

// A statement is one SQL statement of a script, or one psql meta-command
// line (such as pg_dump's `\restrict KEY`).
type statement struct {
	text string // the statement with its terminating semicolon, or the meta-command line
	meta bool
	// head holds the first tokens outside parentheses, tail the last ones
	// before the semicolon.
	head, tail []token
}

// A token is a word (an unquoted keyword or name, upper-cased), a quoted
// name (unquoted), a string constant or a punctuation character.
type token struct {
	kind byte // 'w' word, 'q' quoted name, 's' string, 'p' other
	text string
}

const (
	headTokens = 6
	tailTokens = 3
)

// summary returns the start of the statement on one line, for messages.
func (s *statement) summary() string {
	t := strings.Join(strings.Fields(s.text), " ")
	if len(t) > 100 {
		t = t[:100] + "…"
	}
	return t
}

// words reports whether the statement starts with the given words.
func (s *statement) words(w ...string) bool {
	if len(s.head) < len(w) {
		return false
	}
	for i, x := range w {
		if s.head[i].kind != 'w' || s.head[i].text != x {
			return false
		}
	}
	return true
}

// name returns the text of token i of head if it is a name.
func (s *statement) name(i int) (string, bool) {
	if i >= len(s.head) || s.head[i].kind != 'w' && s.head[i].kind != 'q' {
		return "", false
	}
	if s.head[i].kind == 'w' {
		return strings.ToLower(s.head[i].text), true
	}
	return s.head[i].text, true
}

// isOwner reports whether the statement is ALTER … OWNER TO role.
func (s *statement) isOwner() bool {
	t := s.tail
	return s.words("ALTER") && len(t) == tailTokens &&
		t[0] == token{'w', "OWNER"} && t[1] == token{'w', "TO"} && (t[2].kind == 'w' || t[2].kind == 'q')
}

// isCreatePublic reports whether the statement is CREATE SCHEMA public,
// which pg_dump writes when public is chosen with --schema, and which fails
// on a target that has public, as every new database does.
func (s *statement) isCreatePublic() bool {
	name, ok := s.name(2)
	return len(s.head) == 3 && s.words("CREATE", "SCHEMA") && ok && name == "public"
}

// isACL reports whether the statement grants or revokes privileges.
func (s *statement) isACL() bool {
	return s.words("GRANT") || s.words("REVOKE") || s.words("ALTER", "DEFAULT", "PRIVILEGES")
}

// extension returns the name of the extension a CREATE EXTENSION statement
// creates.
func (s *statement) extension() (string, bool) {
	if !s.words("CREATE", "EXTENSION") {
		return "", false
	}
	i := 2
	if s.words("CREATE", "EXTENSION", "IF", "NOT", "EXISTS") {
		i = 5
	}
	return s.name(i)
}

// extensionSchema returns the schema of a CREATE EXTENSION statement that
// ends with WITH SCHEMA name, as pg_dump writes them.
func (s *statement) extensionSchema() (string, bool) {
	t := s.tail
	if !s.words("CREATE", "EXTENSION") || len(t) != tailTokens || t[0] != (token{'w', "WITH"}) || t[1] != (token{'w', "SCHEMA"}) {
		return "", false
	}
	switch t[2].kind {
	case 'w':
		return strings.ToLower(t[2].text), true
	case 'q':
		return t[2].text, true
	}
	return "", false
}

// roleAttributes matches the role attributes only a superuser may grant.
var roleAttributes = regexp.MustCompile(`(?i)\b(SUPERUSER|REPLICATION|BYPASSRLS)\b`)

// superuserOnly reports whether only a superuser may run the statement,
// and names what it creates or changes ("event trigger x", "publication
// p", "ALTER SYSTEM", …): event triggers, publications, subscriptions,
// ALTER SYSTEM, SECURITY LABEL, roles with superuser attributes and
// untrusted languages, and comments on those (languages: on those named
// in languages).
func (s *statement) superuserOnly(languages []string) (string, bool) {
	named := func(kind string, i int) (string, bool) {
		if n, ok := s.name(i); ok {
			return kind + " " + n, true
		}
		return kind, true
	}
	switch {
	case s.words("CREATE", "EVENT", "TRIGGER"), s.words("ALTER", "EVENT", "TRIGGER"):
		return named("event trigger", 3)
	case s.words("COMMENT", "ON", "EVENT", "TRIGGER"):
		return named("event trigger", 4)
	case s.words("CREATE", "PUBLICATION"), s.words("ALTER", "PUBLICATION"):
		return named("publication", 2)
	case s.words("COMMENT", "ON", "PUBLICATION"):
		return named("publication", 3)
	case s.words("CREATE", "SUBSCRIPTION"), s.words("ALTER", "SUBSCRIPTION"):
		return named("subscription", 2)
	case s.words("COMMENT", "ON", "SUBSCRIPTION"):
		return named("subscription", 3)
	case s.words("ALTER", "SYSTEM"):
		return "ALTER SYSTEM", true
	case s.words("SECURITY", "LABEL"):
		return "security label", true
	case s.words("COMMENT", "ON", "LANGUAGE"):
		if n, ok := s.name(3); ok && slices.Contains(languages, n) {
			return "language " + n, true
		}
	case s.words("CREATE", "ROLE"), s.words("ALTER", "ROLE"), s.words("CREATE", "USER"), s.words("ALTER", "USER"):
		if roleAttributes.MatchString(s.text) {
			return named("role", 2)
		}
	case s.words("CREATE"):
		// CREATE [OR REPLACE] [TRUSTED] [PROCEDURAL] LANGUAGE name
		i := 1
		if s.words("CREATE", "OR", "REPLACE") {
			i = 3
		}
		trusted := i < len(s.head) && s.head[i] == (token{'w', "TRUSTED"})
		if trusted {
			i++
		}
		if i < len(s.head) && s.head[i] == (token{'w', "PROCEDURAL"}) {
			i++
		}
		if i < len(s.head) && s.head[i] == (token{'w', "LANGUAGE"}) && !trusted {
			return named("language", i+1)
		}
	}
	return "", false
}

// restrictCommand reports whether the statement is pg_dump's \restrict or
// \unrestrict meta-command (psql's guard against commands injected through
// object names).
func (s *statement) restrictCommand() bool {
	f := strings.Fields(s.text)
	return s.meta && len(f) == 2 && (f[0] == `\restrict` || f[0] == `\unrestrict`)
}

// A scanner splits an SQL script, as pg_dump writes it, into statements the
// way psql does: semicolons end statements except inside string constants,
// quoted names, dollar quotes, comments, parentheses and the BEGIN … END
// body of CREATE FUNCTION or PROCEDURE. It assumes
// standard_conforming_strings (pg_dump's scripts set it). Comments between
// statements are dropped.
type scanner struct {
	ctx    context.Context
	r      *bufio.Reader
	stream string

	buf        []byte
	st         statement
	parens     int
	begins     int
	wordCount  int
	createFunc []string // the first words, to recognise CREATE [OR REPLACE] FUNCTION|PROCEDURE
}

func newScanner(ctx context.Context, r io.Reader, stream string) *scanner {
	return &scanner{ctx: ctx, r: bufio.NewReaderSize(sourceReader{r}, 64<<10), stream: stream}
}

// errUnterminated is the decoding error of a script that ends inside a
// statement.
var errUnterminated = errors.New("script ends inside a statement")

// next returns the next statement, or io.EOF at the end of the script.
func (s *scanner) next() (*statement, error) {
	if err := s.ctx.Err(); err != nil {
		return nil, s.wrap(err)
	}
	s.buf = s.buf[:0]
	s.st = statement{}
	s.parens, s.begins, s.wordCount, s.createFunc = 0, 0, 0, s.createFunc[:0]
	c, err := s.skipSpace()
	if err != nil {
		return nil, s.wrap(err)
	}
	if c == '\\' {
		line, err := s.r.ReadBytes('\n')
		if err != nil && err != io.EOF {
			return nil, s.wrap(err)
		}
		s.st.text = "\\" + strings.TrimRight(string(line), "\r\n")
		s.st.meta = true
		return &s.st, nil
	}
	if err := s.statement(c); err != nil {
		return nil, s.wrap(err)
	}
	s.st.text = string(s.buf)
	return &s.st, nil
}

// wrap returns the error to report for err.
func (s *scanner) wrap(err error) error {
	if err == io.EOF {
		return err
	}
	return streamErr(s.stream, err)
}

// skipSpace skips white space and comments and returns the byte after them.
func (s *scanner) skipSpace() (byte, error) {
	for {
		c, err := s.r.ReadByte()
		if err != nil {
			return 0, err
		}
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
		case c == '-' && s.peek('-'):
			if _, err := s.r.ReadBytes('\n'); err != nil && err != io.EOF {
				return 0, err
			}
		case c == '/' && s.peek('*'):
			mark := len(s.buf)
			if err := s.blockComment(); err != nil {
				return 0, err
			}
			s.buf = s.buf[:mark]
		default:
			return c, nil
		}
	}
}

// peek reports whether the next byte is c, and if so consumes it.
func (s *scanner) peek(c byte) bool {
	b, err := s.r.Peek(1)
	if err == nil && b[0] == c {
		_, _ = s.r.ReadByte()
		return true
	}
	return false
}

// read returns the next byte of a statement, appending it to buf. The end
// of the script inside a statement is errUnterminated.
func (s *scanner) read() (byte, error) {
	c, err := s.r.ReadByte()
	if err == io.EOF {
		return 0, errUnterminated
	}
	if err != nil {
		return 0, err
	}
	s.buf = append(s.buf, c)
	return c, nil
}

// statement reads one statement, which starts with c, into buf and st.
func (s *scanner) statement(c byte) error {
	s.buf = append(s.buf, c)
	for {
		end, err := s.lex(c)
		if end || err != nil {
			return err
		}
		if c, err = s.read(); err != nil {
			return err
		}
	}
}

// lex reads what starts with c, the last byte read, and reports whether c
// ends the statement.
func (s *scanner) lex(c byte) (end bool, err error) {
	switch {
	case c == ';' && s.parens == 0 && s.begins == 0:
		return true, nil
	case c == '\'':
		err = s.quoted('\'', false)
	case c == '"':
		err = s.quoted('"', false)
	case c == '$':
		err = s.dollar()
	case c == '-' && s.peek('-'):
		s.buf = append(s.buf, '-')
		err = s.lineComment()
	case c == '/' && s.peek('*'):
		s.buf = append(s.buf, '*')
		err = s.blockComment()
	case isWordStart(c):
		err = s.word(c)
	case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
	default:
		if c == '(' {
			s.parens++
		} else if c == ')' && s.parens > 0 {
			s.parens--
		}
		if c == '(' && s.parens == 1 || c == ')' && s.parens == 0 || s.parens == 0 {
			s.token(token{'p', string(c)})
		}
	}
	return false, err
}

func isWordStart(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '_' || c >= 0x80
}

func isWordByte(c byte) bool { return isWordStart(c) || '0' <= c && c <= '9' || c == '$' }

// token records a token outside parentheses.
func (s *scanner) token(t token) {
	if s.parens > 0 && t.kind != 'p' {
		return
	}
	if len(s.st.head) < headTokens {
		s.st.head = append(s.st.head, t)
	}
	if len(s.st.tail) == tailTokens {
		s.st.tail = append(s.st.tail[:0], s.st.tail[1:]...)
	}
	s.st.tail = append(s.st.tail, t)
}

// word reads a word that starts with c, and a string constant that follows
// an E prefix.
func (s *scanner) word(c byte) error {
	start := len(s.buf) - 1
	for {
		b, err := s.r.Peek(1)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if !isWordByte(b[0]) {
			break
		}
		if _, err := s.read(); err != nil {
			return err
		}
	}
	w := strings.ToUpper(string(s.buf[start:]))
	if (w == "E") && s.peek('\'') {
		s.buf = append(s.buf, '\'')
		return s.quoted('\'', true)
	}
	s.token(token{'w', w})
	s.trackBlock(w)
	return nil
}

// trackBlock follows BEGIN … END blocks in the bodies of SQL-standard
// functions and procedures, as psql does.
func (s *scanner) trackBlock(w string) {
	if s.wordCount < 4 {
		s.createFunc = append(s.createFunc, w)
	}
	s.wordCount++
	cf := s.createFunc
	isCreateFunc := len(cf) >= 2 && cf[0] == "CREATE" &&
		(cf[1] == "FUNCTION" || cf[1] == "PROCEDURE" ||
			len(cf) >= 4 && cf[1] == "OR" && cf[2] == "REPLACE" && (cf[3] == "FUNCTION" || cf[3] == "PROCEDURE"))
	if !isCreateFunc || s.parens > 0 {
		return
	}
	switch w {
	case "BEGIN":
		s.begins++
	case "CASE":
		if s.begins > 0 {
			s.begins++
		}
	case "END":
		if s.begins > 0 {
			s.begins--
		}
	}
}

// quoted reads the rest of a string constant or quoted name that ends with
// q (doubled q stands for itself); with backslash escapes in an E string.
func (s *scanner) quoted(q byte, escapes bool) error {
	start := len(s.buf)
	for {
		c, err := s.read()
		if err != nil {
			return err
		}
		switch {
		case escapes && c == '\\':
			if _, err := s.read(); err != nil {
				return err
			}
		case c == q && s.peek(q):
			s.buf = append(s.buf, q)
		case c == q:
			if q == '"' {
				name := strings.ReplaceAll(string(s.buf[start:len(s.buf)-1]), `""`, `"`)
				s.token(token{'q', name})
			} else {
				s.token(token{'s', ""})
			}
			return nil
		}
	}
}

// dollar reads what follows a '$' outside a word: a dollar-quoted string
// constant ($$…$$ or $tag$…$tag$) or a parameter ($1).
func (s *scanner) dollar() error {
	start := len(s.buf) - 1
	for {
		b, err := s.r.Peek(1)
		if err == io.EOF {
			return errUnterminated
		}
		if err != nil {
			return err
		}
		c := b[0]
		if c == '$' {
			break
		}
		if !(isWordStart(c) || len(s.buf) > start+1 && '0' <= c && c <= '9') {
			return nil // a parameter or a lone '$'
		}
		if _, err := s.read(); err != nil {
			return err
		}
	}
	if _, err := s.read(); err != nil {
		return err
	}
	delim := append([]byte(nil), s.buf[start:]...)
	for {
		if _, err := s.read(); err != nil {
			return err
		}
		if bytes.HasSuffix(s.buf[start+len(delim):], delim) {
			s.token(token{'s', ""})
			return nil
		}
	}
}

// lineComment reads the rest of a -- comment.
func (s *scanner) lineComment() error {
	for {
		c, err := s.read()
		if err != nil || c == '\n' {
			return err
		}
	}
}

// blockComment reads the rest of a /* comment */, which may nest.
func (s *scanner) blockComment() error {
	depth := 1
	for depth > 0 {
		c, err := s.read()
		if err != nil {
			return err
		}
		switch {
		case c == '/' && s.peek('*'):
			s.buf = append(s.buf, '*')
			depth++
		case c == '*' && s.peek('/'):
			s.buf = append(s.buf, '/')
			depth--
		}
	}
	return nil
}
