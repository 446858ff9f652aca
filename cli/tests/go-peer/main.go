// go-peer: wsloop's Go reference peer, written from the article that
// wsloop's protocol comes from ("Go WebSocket 连接EOF错误解析与持久化通信实现").
// It speaks the article's wire format with the article's flags, so the
// interop tests (tests/go_peer.rs) check wsloop against an independent
// WebSocket stack (golang.org/x/net/websocket) without anything outside
// this repository.
//
//	go-peer -mode server -address HOST:PORT   // "/" serves ./www, the WebSocket is /server
//	go-peer -mode client -address HOST:PORT   // dials ws://HOST:PORT/server, a request every 2 s
//
// Built in GOPATH mode against Debian's golang-golang-x-net-dev:
//
//	GO111MODULE=off GOPATH=$tmp:/usr/share/gocode go build -o go-peer .
//
// Behaviour kept from the article, on purpose (the tests rely on it):
//   - the server answers every request on a connection in one loop, until
//     the client goes (the article's fix for the one-message-then-EOF bug);
//   - x/net/websocket's server refuses a handshake without Origin (403);
//   - the client sends Origin http://HOST:PORT/ and prints each reply with
//     %+v ("Received from server: {RequestID:1 ...}");
//   - a failed send ends the whole process, as in the article.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"golang.org/x/net/websocket"
)

// Message is the article's wire format: one JSON object per WebSocket
// message, in both directions.
type Message struct {
	RequestID      int    `json:"requestID"`
	Command        string `json:"command"`
	SomeOtherThing string `json:"someOtherThing"`
	Success        bool   `json:"success"`
}

// requestInterval is the article's client's pace: time.Duration(2e9).
const requestInterval = 2 * time.Second

var (
	mode    = flag.String("mode", "", "Mode: server or client")
	address = flag.String("address", "localhost:8080", "Bind address:port")
)

func main() {
	flag.Parse()
	switch *mode {
	case "server":
		runServer()
	case "client":
		runClient()
	default:
		flag.Usage()
		os.Exit(2)
	}
}

func runServer() {
	http.Handle("/", http.FileServer(http.Dir("www")))
	http.Handle("/server", websocket.Handler(serveConnection))
	fmt.Println("Starting Server on", *address)
	if err := http.ListenAndServe(*address, nil); err != nil {
		fmt.Printf("HTTP failed: %s\n", err)
		os.Exit(1)
	}
}

// serveConnection is the persistent loop: it returns (closing the
// connection) only when receiving fails, e.g. io.EOF when the client goes.
func serveConnection(ws *websocket.Conn) {
	defer ws.Close()
	fmt.Println("Client Connected")
	for {
		var request Message
		if err := websocket.JSON.Receive(ws, &request); err != nil {
			fmt.Printf("Error receiving message: %s\n", err)
			return
		}
		fmt.Printf("Received from client: %+v\n", request)
		reply := Message{
			RequestID:      request.RequestID,
			SomeOtherThing: fmt.Sprintf("Command '%s' processed successfully.", request.Command),
			Success:        true,
		}
		if err := websocket.JSON.Send(ws, reply); err != nil {
			fmt.Printf("Error sending response: %s\n", err)
			os.Exit(1)
		}
	}
}

func runClient() {
	fmt.Println("Starting Client")
	url := fmt.Sprintf("ws://%s/server", *address)
	origin := fmt.Sprintf("http://%s/", *address)
	ws, err := websocket.Dial(url, "", origin)
	if err != nil {
		fmt.Printf("Dial failed: %s\n", err)
		os.Exit(1)
	}
	defer ws.Close()
	// One goroutine reads; the main loop selects over its channel and the
	// request timer, as the article's client does.
	replies := make(chan Message)
	go readReplies(ws, replies)
	for i := 1; ; {
		select {
		case <-time.After(requestInterval):
			request := &Message{RequestID: i, Command: fmt.Sprintf("Eject the hot dog %d.", i)}
			i++
			fmt.Printf("Sending request: %+v\n", request)
			if err := websocket.JSON.Send(ws, request); err != nil {
				fmt.Printf("Send failed: %s\n", err)
				os.Exit(1)
			}
		case reply := <-replies:
			fmt.Printf("Received from server: %+v\n", reply)
		}
	}
}

// readReplies forwards every message from the server until receiving fails.
func readReplies(ws *websocket.Conn, replies chan<- Message) {
	for {
		var reply Message
		if err := websocket.JSON.Receive(ws, &reply); err != nil {
			fmt.Printf("Error receiving message from server: %s\n", err)
			return
		}
		replies <- reply
	}
}
